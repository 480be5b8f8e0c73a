"""Every field of the Engine API's container create body is honoured, recorded or
refused by name (hyper.api.docker.fields), and docs/docker-api.md says which."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hyper.api.docker import convert, fields
from hyper.errors import InvalidArgument
from hyper.runtime.confinement import NOT_YET_HONOURED

DOC = Path(__file__).resolve().parents[2] / "docs" / "docker-api.md"

# The create body of Engine API 1.43 (ContainerConfig, HostConfig with its
# Resources, NetworkingConfig), field by field as the API's swagger lists them.
API_CONFIG = [
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
]
API_HOST_CONFIG = [
    "CpuShares",
    "Memory",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "NanoCpus",
    "OomKillDisable",
    "Init",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "Binds",
    "ContainerIDFile",
    "LogConfig",
    "NetworkMode",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "Mounts",
    "ConsoleSize",
    "Annotations",
    "CapAdd",
    "CapDrop",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "StorageOpt",
    "Tmpfs",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Sysctls",
    "Runtime",
    "Isolation",
    "MaskedPaths",
    "ReadonlyPaths",
]
API_FIELDS = (
    API_CONFIG + [f"HostConfig.{name}" for name in API_HOST_CONFIG] + ["NetworkingConfig.EndpointsConfig"]
)

# A value of each field that asks for something (for the refused ones: what a user would set).
SAMPLES: dict[str, Any] = {
    "Domainname": "example.com",
    "MacAddress": "92:d0:c6:0a:29:33",
    "Volumes": {"/data": {}},
    "OnBuild": ["RUN true"],
    "ArgsEscaped": True,
    "HostConfig.MemorySwappiness": 10,
    "HostConfig.CapAdd": ["NET_ADMIN"],
    "HostConfig.CapDrop": ["CHOWN"],
    "HostConfig.Privileged": True,
    "HostConfig.SecurityOpt": ["no-new-privileges"],
    "HostConfig.Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200}],
    "HostConfig.ShmSize": 128 << 20,
    "HostConfig.Init": True,
    "HostConfig.Binds": ["/tmp:/x"],
    "HostConfig.Mounts": [{"Type": "tmpfs", "Target": "/x"}],
    "HostConfig.VolumesFrom": ["other"],
    "HostConfig.VolumeDriver": "local",
    "HostConfig.Tmpfs": {"/run": ""},
    "HostConfig.PortBindings": {"80/tcp": [{"HostPort": "80"}]},
    "HostConfig.PublishAllPorts": True,
    "HostConfig.Links": ["other:o"],
    "HostConfig.Dns": ["1.1.1.1"],
    "HostConfig.DnsOptions": ["ndots:2"],
    "HostConfig.DnsSearch": ["example.com"],
    "HostConfig.ExtraHosts": ["db:10.0.0.2"],
    "HostConfig.Devices": [{"PathOnHost": "/dev/kvm", "PathInContainer": "/dev/kvm"}],
    "HostConfig.DeviceCgroupRules": ["c 1:3 rwm"],
    "HostConfig.DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}],
    "HostConfig.ReadonlyRootfs": True,
    "HostConfig.GroupAdd": ["10"],
    "HostConfig.Sysctls": {"net.core.somaxconn": "100"},
    "HostConfig.OomScoreAdj": 10,
    "HostConfig.OomKillDisable": True,
    "HostConfig.PidsLimit": 10,
    "HostConfig.PidMode": "host",
    "HostConfig.UTSMode": "host",
    "HostConfig.CgroupnsMode": "private",
    "HostConfig.Cgroup": "x",
    "HostConfig.CgroupParent": "hyper",
    "HostConfig.CpuShares": 512,
    "HostConfig.CpuPeriod": 100_000,
    "HostConfig.CpuQuota": 50_000,
    "HostConfig.CpuRealtimePeriod": 1000,
    "HostConfig.CpuRealtimeRuntime": 100,
    "HostConfig.CpusetCpus": "0",
    "HostConfig.CpusetMems": "0",
    "HostConfig.MemoryReservation": 100 << 20,
    "HostConfig.KernelMemory": 100 << 20,
    "HostConfig.KernelMemoryTCP": 100 << 20,
    "HostConfig.BlkioWeight": 100,
    "HostConfig.BlkioWeightDevice": [{"Path": "/dev/vda", "Weight": 100}],
    "HostConfig.BlkioDeviceReadBps": [{"Path": "/dev/vda", "Rate": 1}],
    "HostConfig.BlkioDeviceWriteBps": [{"Path": "/dev/vda", "Rate": 1}],
    "HostConfig.BlkioDeviceReadIOps": [{"Path": "/dev/vda", "Rate": 1}],
    "HostConfig.BlkioDeviceWriteIOps": [{"Path": "/dev/vda", "Rate": 1}],
    "HostConfig.StorageOpt": {"size": "1G"},
    "HostConfig.Annotations": {"a": "b"},
    "HostConfig.MaskedPaths": ["/proc/kcore"],
    "HostConfig.ReadonlyPaths": ["/proc/sys"],
    "HostConfig.CpuCount": 2,
    "HostConfig.CpuPercent": 50,
    "HostConfig.IOMaximumIOps": 10,
    "HostConfig.IOMaximumBandwidth": 1 << 20,
    # honoured and recorded ones
    "Hostname": "box",
    "User": "1000",
    "AttachStdin": True,
    "AttachStdout": True,
    "AttachStderr": True,
    "ExposedPorts": {"80/tcp": {}},
    "Tty": True,
    "OpenStdin": True,
    "StdinOnce": True,
    "Env": ["A=1"],
    "Cmd": ["true"],
    "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000},
    "Image": "busybox",
    "WorkingDir": "/tmp",
    "Entrypoint": ["sh"],
    "NetworkDisabled": True,
    "Labels": {"a": "b"},
    "StopSignal": "SIGUSR1",
    "StopTimeout": 3,
    "Shell": ["/bin/bash", "-c"],
    "HostConfig.Memory": 256 << 20,
    "HostConfig.MemorySwap": -1,
    "HostConfig.NanoCpus": 2_000_000_000,
    "HostConfig.RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
    "HostConfig.AutoRemove": True,
    "HostConfig.ConsoleSize": [40, 120],
    "HostConfig.NetworkMode": "none",
    "HostConfig.LogConfig": {"Type": "json-file", "Config": {}},
    "HostConfig.Runtime": "hyper",
    "HostConfig.Isolation": "default",
    "HostConfig.IpcMode": "private",
    "HostConfig.UsernsMode": "host",
    "HostConfig.ContainerIDFile": "/tmp/cid",
    "NetworkingConfig.EndpointsConfig": {"none": {"Aliases": None, "IPAddress": ""}},
}

# What the docker CLI (28.x, against API 1.43) sends for `docker create busybox true`.
DOCKER_CLI_DEFAULT_BODY: dict[str, Any] = {
    "AttachStderr": True, "AttachStdin": False, "AttachStdout": True, "Cmd": ["true"], "Domainname": "",
    "Entrypoint": None, "Env": None, "Hostname": "", "Image": "busybox", "Labels": {}, "OnBuild": None,
    "OpenStdin": False, "StdinOnce": False, "Tty": False, "User": "", "Volumes": {}, "WorkingDir": "",
    "HostConfig": {
        "AutoRemove": False, "Binds": None, "BlkioDeviceReadBps": [], "BlkioDeviceReadIOps": [],
        "BlkioDeviceWriteBps": [], "BlkioDeviceWriteIOps": [], "BlkioWeight": 0, "BlkioWeightDevice": [],
        "CapAdd": None, "CapDrop": None, "Cgroup": "", "CgroupParent": "", "CgroupnsMode": "",
        "ConsoleSize": [0, 0], "ContainerIDFile": "", "CpuCount": 0, "CpuPercent": 0, "CpuPeriod": 0,
        "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpuShares": 0, "CpusetCpus": "",
        "CpusetMems": "", "DeviceCgroupRules": None, "DeviceRequests": None, "Devices": [], "Dns": [],
        "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None, "IOMaximumBandwidth": 0,
        "IOMaximumIOps": 0, "IpcMode": "", "Isolation": "", "Links": None,
        "LogConfig": {"Config": {}, "Type": ""}, "MaskedPaths": None, "Memory": 0, "MemoryReservation": 0,
        "MemorySwap": 0, "MemorySwappiness": -1, "NanoCpus": 0, "NetworkMode": "default",
        "OomKillDisable": False, "OomScoreAdj": 0, "PidMode": "", "PidsLimit": 0, "PortBindings": {},
        "Privileged": False, "PublishAllPorts": False, "ReadonlyPaths": None, "ReadonlyRootfs": False,
        "RestartPolicy": {"MaximumRetryCount": 0, "Name": "no"}, "SecurityOpt": None, "ShmSize": 0,
        "UTSMode": "", "Ulimits": [], "UsernsMode": "", "VolumeDriver": "", "VolumesFrom": None,
    },
    "NetworkingConfig": {
        "EndpointsConfig": {
            "default": {
                "Aliases": None, "DNSNames": None, "DriverOpts": None, "EndpointID": "", "Gateway": "",
                "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "GwPriority": 0, "IPAMConfig": None,
                "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "Links": None, "MacAddress": "",
                "NetworkID": "",
            }
        }
    },
}  # fmt: skip


# What a sample needs beside it: swap equal to the memory is "no swap".
ALONGSIDE: dict[str, dict[str, Any]] = {"HostConfig.MemorySwap": {"Memory": 256 << 20}}


def body_with(path: str, value: Any) -> dict[str, Any]:
    section, _, key = path.rpartition(".")
    body: dict[str, Any] = {"Image": "busybox"}
    if section:
        body[section] = {key: value, **ALONGSIDE.get(path, {})}
    else:
        body[key] = value
    return body


def test_every_field_of_the_api_has_a_decision() -> None:
    assert sorted(API_FIELDS) == sorted(fields.BY_PATH)
    assert sorted(SAMPLES) == sorted(fields.BY_PATH)


@pytest.mark.parametrize("path", API_FIELDS)
def test_a_field_set_is_honoured_or_refused_by_its_name(path: str) -> None:
    field = fields.BY_PATH[path]
    body = body_with(path, SAMPLES[path])
    if field.effective is fields.Decision.REFUSED:
        with pytest.raises(InvalidArgument, match=re.escape(f"({path})")) as refused:
            convert.create_request(body, None)
        assert "Hyper does not support" in refused.value.message and refused.value.hint
    else:
        convert.create_request(body, None)


def test_what_the_docker_cli_sends_for_nothing_asks_for_nothing() -> None:
    request = convert.create_request(DOCKER_CLI_DEFAULT_BODY, None)
    assert request.options.command == ("true",) and request.console_size is None
    assert request.recorded == {"AttachStderr": True, "AttachStdout": True}


def test_a_field_hyper_does_not_know_is_refused_when_set() -> None:
    with pytest.raises(InvalidArgument, match=r"does not know the container setting HostConfig\.Future"):
        convert.create_request({"Image": "b", "HostConfig": {"Future": ["x"]}}, None)
    with pytest.raises(InvalidArgument, match="does not know the container setting Frobnicate"):
        convert.create_request({"Image": "b", "Frobnicate": True}, None)
    assert convert.create_request({"Image": "b", "Future": None, "Later": []}, None).options.image == "b"


def test_the_confinement_options_are_parsed_for_when_they_are_honoured() -> None:
    host = {"CapAdd": ["NET_ADMIN"], "Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 20}], "Init": True}
    if any(option in NOT_YET_HONOURED for option in ("cap_add", "ulimits", "init")):
        with pytest.raises(InvalidArgument, match="Hyper does not support"):
            convert.create_request({"Image": "b", "HostConfig": host}, None)
    else:
        options = convert.create_request({"Image": "b", "HostConfig": host}, None).options
        assert (options.cap_add, options.ulimits, options.init) == (("NET_ADMIN",), ("nofile=10:20",), True)


def test_honoured_fields_with_limited_values_refuse_the_others() -> None:
    for path, value in (
        ("HostConfig.IpcMode", "host"),
        ("HostConfig.UsernsMode", "private"),
        ("HostConfig.LogConfig", {"Type": "syslog"}),
        ("HostConfig.LogConfig", {"Type": "json-file", "Config": {"compress": "true"}}),
        ("HostConfig.LogConfig", {"Type": "local", "Config": {"mode": "non-blocking"}}),
        ("HostConfig.Runtime", "runc"),
        ("HostConfig.Isolation", "hyperv"),
        ("Healthcheck", {"Test": ["CMD", "true"], "StartInterval": 1_000_000_000}),
    ):
        with pytest.raises(InvalidArgument, match="Hyper does not support"):
            convert.create_request(body_with(path, value), None)


def doc_table() -> dict[str, str]:
    """The option table of docs/docker-api.md: field → decision."""
    text = DOC.read_text()
    section = text.split("### Container create options, one by one", 1)[1]
    rows = re.findall(r"^\| `([A-Za-z.]+)` \| [^|]* \| ([a-z ()]+) \|", section, re.MULTILINE)
    return dict(rows)


def test_the_documentation_shows_the_decisions_of_the_code() -> None:
    def shown(field: fields.Field) -> str:
        if field.option is not None and field.effective is fields.Decision.REFUSED:
            return "refused (not yet)"
        return field.effective.value

    assert doc_table() == {field.path: shown(field) for field in fields.FIELDS}
