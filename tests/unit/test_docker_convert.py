"""Docker's JSON for containers and the shared pieces of the Docker API
(hyper.api.docker.convert, common and server's pure functions): no daemon, no VM."""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from hyper.api.docker import convert
from hyper.api.docker.common import (
    DetachScanner,
    docker_error,
    error_response,
    filters,
    frame,
    parse_detach_keys,
    parse_time,
    rfc3339,
)
from hyper.api.docker.server import _event_document, _event_matches, version_document
from hyper.daemon.events import Event, network_event, volume_event
from hyper.daemon.policy import PolicyName, RestartPolicy
from hyper.daemon.state import ContainerRecord
from hyper.errors import InvalidArgument, NotFound
from hyper.humanize import human_duration
from hyper.image import ImageConfig
from hyper.runtime import spec as specs
from hyper.storage import mounts as storage_mounts
from hyper.tenants.model import Tenant
from hyper.tenants.scope import Principal, Scope

ID = "0123456789ab" + "c" * 52
IMAGE_ID = "sha256:" + "1" * 64


def record(**changes: Any) -> ContainerRecord:
    options = {"image": "busybox", "command": ["sh", "-c", "echo hi"], "entrypoint": None, "user": None}
    base = ContainerRecord(
        id=ID,
        name="web",
        image="busybox",
        image_id=IMAGE_ID,
        command=["sh", "-c", "echo hi"],
        created=1_700_000_000.5,
        state="running",
        options=options,
        labels={"team": "a", "tier": "web"},
        started_at=1_700_000_010.0,
        qemu_pid=4242,
        process={"env": ["PATH=/bin", "A=1"], "cwd": "/srv", "user": "0"},
    )
    return replace(base, **changes)


# -- create_request: Docker's create body --------------------------------------------------------


def test_create_request_carries_the_docker_fields() -> None:
    body = {
        "Image": "busybox",
        "Cmd": ["echo", "hi"],
        "Env": ["A=1"],
        "WorkingDir": "/tmp",
        "User": "1000:1000",
        "Tty": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Hostname": "box",
        "Labels": {"team": "a"},
        "HostConfig": {
            "Memory": 256 << 20,
            "NanoCpus": 1_500_000_000,
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
            "AutoRemove": False,
            "NetworkMode": "default",
        },
    }
    request = convert.create_request(body, "named")
    options = request.options
    assert (options.image, options.command, options.env) == ("busybox", ("echo", "hi"), ("A=1",))
    assert (options.workdir, options.user, options.hostname, options.name) == (
        "/tmp",
        "1000:1000",
        "box",
        "named",
    )
    assert (options.tty, options.interactive, request.stdin_once) == (True, True, True)
    assert (options.memory_mib, options.cpus) == (256, 2)  # CPUs round up to whole vCPUs
    assert request.restart == RestartPolicy(PolicyName.ON_FAILURE, 2)
    assert request.labels == {"team": "a"}


def test_create_request_defaults() -> None:
    request = convert.create_request({"Image": "busybox"}, None)
    assert request.options.name is None and request.options.entrypoint is None
    assert (request.options.memory_mib, request.options.cpus) == (specs.DEFAULT_MEMORY_MIB, 1)
    assert request.restart == RestartPolicy() and not request.auto_remove


def test_a_docker_entrypoint_of_several_words_leads_the_command() -> None:
    options = convert.create_request(
        {"Image": "b", "Entrypoint": ["sh", "-c"], "Cmd": ["echo x"]}, None
    ).options
    assert (options.entrypoint, options.command) == ("sh", ("-c", "echo x"))
    emptied = convert.create_request({"Image": "b", "Entrypoint": []}, None).options
    assert emptied.entrypoint == ""  # `--entrypoint ""`: the image's is dropped


@pytest.mark.parametrize(
    ("host_config", "named"),
    [
        ({"VolumeDriver": "nfs"}, "--volume-driver"),
        ({"Devices": [{"PathOnHost": "/dev/kvm"}]}, "host devices (--device)"),
    ],
)
def test_what_hyper_cannot_honour_is_refused_by_name(host_config: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgument, match=named.replace("(", r"\(").replace(")", r"\)")):
        convert.create_request({"Image": "busybox", "HostConfig": host_config}, None)


def test_mounts_of_the_create_body_become_canonical_mounts() -> None:
    body = {
        "Image": "b",
        "Volumes": {"/anon": {}, "/data": {}},
        "HostConfig": {
            "Binds": ["/srv/site:/site:ro", "db:/data"],
            "Mounts": [{"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1 << 20}}],
            "Tmpfs": {"/run": "size=16m,mode=1777"},
            "ReadonlyRootfs": True,
            "VolumesFrom": ["other:ro"],
            "VolumeDriver": "local",
        },
    }
    request = convert.create_request(body, None)
    mounts = [storage_mounts.parse_mount(m) for m in request.options.mounts]
    assert [(m.type.value, m.source, m.target, m.read_only) for m in mounts] == [
        ("bind", "/srv/site", "/site", True),
        ("volume", "db", "/data", False),
        ("tmpfs", "", "/scratch", False),
        ("tmpfs", "", "/run", False),
        ("volume", "", "/anon", False),  # Config.Volumes where nothing else is mounted
    ]
    assert mounts[2].tmpfs_size == 1 << 20 and mounts[3].tmpfs_mode == 0o1777 and mounts[4].anonymous
    assert request.options.read_only and request.options.volumes_from == ("other:ro",)
    assert request.recorded["Binds"] == ["/srv/site:/site:ro", "db:/data"]
    documents = convert.mount_documents({"mounts": list(request.options.mounts)}, Path("/state/volumes"))
    assert documents[1] == {
        "Type": "volume", "Name": "db", "Source": "/state/volumes/db/_data", "Destination": "/data",
        "Driver": "local", "Mode": "", "RW": True, "Propagation": "",
    }  # fmt: skip
    assert documents[0]["Source"] == "/srv/site" and documents[0]["RW"] is False


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        ({"Binds": ["/a:/x", "v1:/x"]}, "duplicate mount point: /x"),
        ({"Binds": ["bad name:/x"]}, "invalid volume name"),
        ({"Binds": ["/a:relative"]}, "must be an absolute path"),
        ({"Mounts": [{"Type": "volume", "Target": "/proc"}]}, "cannot be mounted over"),
        ({"Mounts": [{"Type": "npipe", "Target": "/x"}]}, "invalid mount type"),
        ({"Tmpfs": {"/run": "size=lots"}}, "invalid tmpfs size"),
        ({"VolumesFrom": ["c:rx"]}, "invalid --volumes-from"),
    ],
)
def test_bad_mounts_in_the_create_body_are_refused(host_config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        convert.create_request({"Image": "b", "HostConfig": host_config}, None)


def test_empty_unsupported_fields_are_no_request_for_them() -> None:
    # The docker CLI sends empty lists and false for what the user did not ask.
    host: dict[str, Any] = {
        "Binds": None,
        "PortBindings": {},
        "Privileged": False,
        "Devices": [],
        "NetworkMode": "default",
    }
    assert convert.create_request({"Image": "busybox", "HostConfig": host}, None).options.image == "busybox"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "no Image"),
        ({"Image": "b", "Cmd": [1]}, "Cmd must be a list of strings"),
        ({"Image": "b", "WorkingDir": 3}, "WorkingDir must be a string"),
        ({"Image": "b", "HostConfig": {"Memory": 1 << 20}}, "below the minimum"),
        ({"Image": "b", "HostConfig": {"Memory": -1}}, "HostConfig.Memory must be an integer"),
        ({"Image": "b", "Labels": {"a": 1}}, "Labels must map names to strings"),
        ({"Image": "b", "Volumes": ["/data"]}, "Volumes must be an object"),
        ({"Image": "b", "HostConfig": []}, "HostConfig must be an object"),
    ],
)
def test_create_request_rejects_malformed_bodies(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        convert.create_request(body, None)


# -- summary and inspect -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (300, "5 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (90 * 86400, "3 months"),
        (3 * 365 * 86400, "3 years"),
    ],
)
def test_human_duration_reads_as_dockers(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_text_per_state() -> None:
    now = 1_700_000_070.0
    assert convert.statustext(record(), now) == "Up About a minute"
    assert convert.statustext(record(state="paused"), now) == "Up About a minute (Paused)"
    exited = record(state="exited", exit_code=3, finished_at=now - 5)
    assert convert.statustext(exited, now) == "Exited (3) 5 seconds ago"
    assert convert.statustext(record(state="created"), now) == "Created"


def test_summary_is_one_row_of_docker_ps() -> None:
    row = convert.summary(record(), now=1_700_000_070.0)
    assert (row["Id"], row["Names"], row["Image"], row["ImageID"]) == (ID, ["/web"], "busybox", IMAGE_ID)
    assert (row["Command"], row["Created"], row["State"]) == ("sh -c 'echo hi'", 1_700_000_000, "running")
    assert row["Labels"] == {"team": "a", "tier": "web"} and row["Ports"] == []


def test_inspect_of_a_running_container() -> None:
    doc = convert.inspect(record(), ["e1"], "/state/log.jsonl", ImageConfig(cmd=("sh",)))
    assert (doc["Id"], doc["Name"], doc["Image"], doc["RestartCount"]) == (ID, "/web", IMAGE_ID, 0)
    assert (doc["Path"], doc["Args"]) == ("sh", ["-c", "echo hi"])
    state = doc["State"]
    assert (state["Status"], state["Running"], state["Paused"], state["Pid"]) == (
        "running",
        True,
        False,
        4242,
    )
    assert (state["StartedAt"], state["FinishedAt"]) == (
        "2023-11-14T22:13:30.000000000Z",
        "0001-01-01T00:00:00Z",
    )
    config = doc["Config"]
    assert (config["Image"], config["Env"], config["WorkingDir"]) == ("busybox", ["PATH=/bin", "A=1"], "/srv")
    assert (config["Cmd"], config["Entrypoint"], config["User"]) == (["sh", "-c", "echo hi"], None, "")
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert (doc["ExecIDs"], doc["LogPath"]) == (["e1"], "/state/log.jsonl")


def test_inspect_of_an_exited_container_has_no_pid() -> None:
    exited = record(state="exited", exit_code=3, finished_at=1_700_000_020.0, reason="boom")
    state = convert.inspect(exited, [], "")["State"]
    assert (state["Status"], state["Running"], state["Pid"], state["ExitCode"]) == ("exited", False, 0, 3)
    assert state["Error"] == "boom"


def test_inspect_keeps_a_restart_policy() -> None:
    policy = RestartPolicy(PolicyName.ON_FAILURE, 2).document()
    doc = convert.inspect(record(restart_policy=policy, restart_count=2), [], "")
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert doc["RestartCount"] == 2


def test_config_takes_the_images_entrypoint_cmd_and_user_where_the_user_gave_none() -> None:
    image = ImageConfig(entrypoint=("/entry.sh",), cmd=("serve",), user="app")
    bare = record(options={"command": [], "entrypoint": None, "user": None}, command=["/entry.sh", "serve"])
    assert convert.effective_config(bare, image) == (["/entry.sh"], ["serve"], "app")
    given = record(options={"command": ["debug"], "entrypoint": None, "user": "0"})
    assert convert.effective_config(given, image) == (["/entry.sh"], ["debug"], "0")
    # --entrypoint replaces the image's and drops its CMD, as in Docker.
    replaced = record(options={"command": [], "entrypoint": "sh", "user": None})
    assert convert.effective_config(replaced, image) == (["sh"], None, "app")
    assert convert.effective_config(record(options={"command": [], "entrypoint": ""}), image)[0] is None


def test_config_without_the_image_falls_back_to_the_command_line() -> None:
    bare = record(options={"command": [], "entrypoint": None}, command=["/entry.sh", "serve"])
    assert convert.effective_config(bare, None) == (None, ["/entry.sh", "serve"], "")


# -- archive stat, filters ------------------------------------------------------------------------


def test_path_stat_uses_gos_file_mode_bits() -> None:
    directory = convert.path_stat({"name": "d", "size": 4096, "mode": 0o040755, "mtime": 0})
    assert directory == {
        "name": "d",
        "size": 4096,
        "mode": (1 << 31) | 0o755,
        "mtime": "0001-01-01T00:00:00Z",
        "linkTarget": "",
    }
    link = convert.path_stat({"name": "l", "mode": 0o120777, "link_target": "/x", "mtime": 1.5})
    assert (link["mode"], link["linkTarget"], link["mtime"]) == ((1 << 27) | 0o777, "/x", rfc3339(1.5))
    setuid = convert.path_stat({"name": "su", "mode": 0o104755})
    assert setuid["mode"] == (1 << 23) | 0o755


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        ({"id": ["0123"]}, True),
        ({"id": ["9999"]}, False),
        ({"name": ["web"]}, True),
        ({"name": ["/we"]}, True),
        ({"name": ["db"]}, False),
        ({"status": ["running", "paused"]}, True),
        ({"status": ["exited"]}, False),
        ({"label": ["team=a", "tier"]}, True),
        ({"label": ["team=b"]}, False),
        ({"ancestor": ["busybox"]}, True),
        ({"ancestor": ["alpine"]}, False),
        ({"exited": ["0"]}, False),  # it still runs
        ({"name": ["web"], "status": ["exited"]}, False),  # every filter must match
    ],
)
def test_container_filters(wanted: dict[str, list[str]], matches: bool) -> None:
    assert convert.matches_filters(record(), wanted) is matches


def test_exited_filter_and_unknown_filters() -> None:
    assert convert.matches_filters(record(state="exited", exit_code=3), {"exited": ["3"]})
    with pytest.raises(InvalidArgument, match="invalid filter 'publish'"):
        convert.matches_filters(record(), {"publish": ["80"]})
    mounted = record(
        options={"mounts": ["type=volume,source=db,target=/data", "type=bind,source=/srv,target=/s"]}
    )
    for value in ("db", "/data", "/srv", "/s"):
        assert convert.matches_filters(mounted, {"volume": [value]})
    assert not convert.matches_filters(mounted, {"volume": ["other"]})


# -- common: errors, times, framing, detach keys -------------------------------------------------


def test_errors_are_json_with_dockers_message_field() -> None:
    response = error_response(NotFound("No such container: x"))
    assert (response.status, response.content_type) == (404, "application/json")
    assert response.charset is None  # the docker CLI decodes application/json and nothing else
    assert json.loads(response.text or "") == {"message": "No such container: x"}
    hinted = error_response(InvalidArgument("bad", hint="do this"))
    assert hinted.status == 400
    assert json.loads(hinted.text or "")["message"] == "bad (do this)"
    assert docker_error(501, "nope").status == 501


def test_rfc3339_and_parse_time_round_trip() -> None:
    assert rfc3339(None) == rfc3339(0) == "0001-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250000000Z"
    assert parse_time("1700000000.25") == 1_700_000_000.25
    assert parse_time("2023-11-14T22:13:20.25Z") == 1_700_000_000.25
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_time("") is None and parse_time(None) is None
    with pytest.raises(InvalidArgument, match="invalid time"):
        parse_time("yesterday")


def test_frame_is_dockers_stream_header() -> None:
    assert frame(1, b"hi") == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
    big = frame(2, b"x" * 70000)
    assert big[:8] == struct.pack(">BxxxI", 2, 70000) and len(big) == 70008


@pytest.mark.parametrize(
    ("spec", "keys"),
    [
        (None, b"\x10\x11"),
        ("", b"\x10\x11"),
        ("ctrl-a", b"\x01"),
        ("ctrl-x,x", b"\x18x"),
        ("ctrl-@,ctrl-[,ctrl-_", b"\x00\x1b\x1f"),
        ("a,b,c", b"abc"),
    ],
)
def test_detach_keys(spec: str | None, keys: bytes) -> None:
    assert parse_detach_keys(spec) == keys


@pytest.mark.parametrize("spec", ["ctrl-1", "ctrl-ab", "shift-a", "ab"])
def test_bad_detach_keys_are_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_detach_keys(spec)


def test_detach_scanner_finds_keys_across_reads_and_keeps_false_starts() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"ab\x10") == (b"ab", False)  # a possible start is held back
    assert scanner.feed(b"\x11rest") == (b"", True)
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"\x10") == (b"", False)
    assert scanner.feed(b"x") == (b"\x10x", False)  # not the sequence after all: forwarded
    assert scanner.feed(b"\x10\x10\x11") == (b"\x10", True)
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)


def test_filters_query_in_both_of_dockers_forms() -> None:
    def parsed(text: str) -> dict[str, list[str]]:
        return filters(make_mocked_request("GET", f"/containers/json?filters={text}"))

    assert parsed('{"name":["web"],"status":["running"]}') == {"name": ["web"], "status": ["running"]}
    assert parsed('{"label":{"a=1":true,"b":false}}') == {"label": ["a=1"]}
    assert filters(make_mocked_request("GET", "/containers/json")) == {}
    for bad in ("not-json", "[1]", '{"name":"web"}'):
        with pytest.raises(InvalidArgument):
            parsed(bad)


# -- server: version, events ---------------------------------------------------------------------


def test_version_repeats_the_engine_details_the_cli_prints() -> None:
    doc: dict[str, Any] = json.loads(json.dumps(version_document()))
    (engine,) = doc["Components"]
    details = engine["Details"]
    assert (doc["ApiVersion"], doc["MinAPIVersion"]) == ("1.43", "1.41")
    assert (details["ApiVersion"], details["MinAPIVersion"], details["Os"]) == ("1.43", "1.41", "linux")
    assert details["Arch"] == doc["Arch"] and details["GoVersion"] == doc["GoVersion"]


def test_events_match_dockers_filters_and_shape() -> None:
    attributes = {"name": "web", "image": "busybox", "exitCode": "3", "team": "a"}
    died = Event("container", "die", ID, attributes, 1_700_000_000_500_000_000)
    assert _event_matches(died, {"container": ["web"], "event": ["die"], "type": ["container"]})
    assert _event_matches(died, {"container": [ID[:12]], "image": ["busybox"], "label": ["team=a"]})
    assert not _event_matches(died, {"event": ["start"]})
    assert not _event_matches(died, {"container": ["db"]})
    assert not _event_matches(died, {"volume": ["x"]})
    exec_start = Event("container", "exec_start: sh -c true", ID, {"name": "web"})
    assert _event_matches(exec_start, {"event": ["exec_start"]})
    doc = _event_document(died)
    assert (doc["Type"], doc["Action"], doc["status"], doc["id"], doc["from"]) == (
        "container",
        "die",
        "die",
        ID,
        "busybox",
    )
    assert (doc["time"], doc["timeNano"]) == (1_700_000_000, 1_700_000_000_500_000_000)


def test_volume_and_network_events_match_by_their_names_and_a_tenant_sees_its_own_names() -> None:
    tenant = Tenant("t1", "acme", 0.0)
    scope = Scope(Principal(tenant, "HKKEY"))
    made = volume_event("create", "t1.data", "t1")
    assert made.attributes == {"driver": "local"} and made.owner == "t1"
    assert _event_document(made, scope)["Actor"] == {"ID": "data", "Attributes": {"driver": "local"}}
    assert _event_document(made)["Actor"]["ID"] == "t1.data"  # type: ignore[index]
    assert _event_matches(made, {"volume": ["data"], "type": ["volume"]}, scope)
    assert _event_matches(made, {"volume": ["t1.data"]})  # the admin's name of it
    assert not _event_matches(made, {"container": ["data"]}, scope)
    joined = network_event("connect", "n" * 64, "back", "t1", container=ID)
    assert joined.attributes == {"name": "back", "type": "bridge", "container": ID}
    for wanted in (
        {"network": ["back"]},
        {"network": ["n" * 12]},
        {"event": ["connect"], "type": ["network"]},
    ):
        assert _event_matches(joined, wanted, scope)
    assert not _event_matches(joined, {"network": ["front"]}) and not _event_matches(
        joined, {"volume": ["back"]}
    )
    assert "status" not in _event_document(joined)  # the old top-level fields are containers' only


def test_hijacked_connection_tells_a_half_close_from_a_close() -> None:
    from hyper.api.docker.common import _HijackProtocol, _RawReader

    class Original(asyncio.Protocol):
        lost = False

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True

    async def scenario() -> None:
        reader, original = _RawReader(), Original()
        protocol = _HijackProtocol(original, reader)
        protocol.data_received(b"input")
        assert protocol.eof_received() is True  # a half-close keeps the transport for the output
        assert (await reader.queue.get(), await reader.queue.get()) == (b"input", b"")
        assert not reader.disconnected.is_set()
        protocol.connection_lost(None)
        assert reader.disconnected.is_set() and original.lost

    asyncio.run(scenario())


def test_group_add_and_sysctls_reach_the_options_and_inspect() -> None:
    body = {
        "Image": "busybox",
        "HostConfig": {"GroupAdd": ["audio", "1234"], "Sysctls": {"net.core.somaxconn": "1024"}},
    }
    options = convert.create_request(body, None).options
    assert (options.group_add, options.sysctls) == (("audio", "1234"), ("net.core.somaxconn=1024",))
    shown = convert.confinement({"group_add": ["audio", "1234"], "sysctls": ["net.core.somaxconn=1024"]})
    assert (shown["GroupAdd"], shown["Sysctls"]) == (["audio", "1234"], {"net.core.somaxconn": "1024"})
    with pytest.raises(InvalidArgument, match=r"HostConfig\.Sysctls must map names to string values"):
        convert.create_request({"Image": "b", "HostConfig": {"Sysctls": {"net.core.somaxconn": 1}}}, None)
