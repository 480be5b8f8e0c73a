"""CRI messages into Hyper's requests and records: pure translations, no VM."""

from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from hyper.cri import translate
from hyper.cri.records import Metadata, RecordStore, SandboxRecord, SandboxState
from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.runtime import spec as specs
from hyper.runtime.settings import Settings


def _sandbox(**config: object) -> SandboxRecord:
    values: dict[str, object] = {
        "metadata": cri.PodSandboxMetadata(name="web", namespace="ns", uid="u1"),
        **config,
    }
    request = cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(**values))  # type: ignore[arg-type]
    return translate.sandbox_record(request, "a" * 64, 5)


def _options(sandbox: SandboxRecord, **config: object) -> specs.RunOptions:
    values: dict[str, object] = {"metadata": cri.ContainerMetadata(name="c"), **config}
    container = cri.ContainerConfig(**values)  # type: ignore[arg-type]
    return translate.create_request(sandbox, container, "busybox", Settings()).options


def test_host_namespaces_are_refused_with_the_reason() -> None:
    for namespaces in (
        cri.NamespaceOption(network=cri.NODE),
        cri.NamespaceOption(pid=cri.NODE),
        cri.NamespaceOption(ipc=cri.NODE),
    ):
        context = cri.LinuxSandboxSecurityContext(namespace_options=namespaces)
        with pytest.raises(InvalidArgument, match="kernel of its own"):
            _sandbox(linux=cri.LinuxPodSandboxConfig(security_context=context))
    # NODE for the user namespace means "none of its own", which is what a VM's container has.
    userns = cri.NamespaceOption(userns_options=cri.UserNamespace(mode=cri.NODE))
    _sandbox(
        linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=userns)
        )
    )


def test_command_and_args_follow_kubernetes_rules() -> None:
    sandbox = _sandbox()
    both = _options(sandbox, command=["sh", "-c"], args=["echo hi"])
    assert (both.entrypoint, both.command) == ("", ("sh", "-c", "echo hi"))  # the image's CMD is dropped
    args_only = _options(sandbox, args=["--flag"])
    assert (args_only.entrypoint, args_only.command) == (None, ("--flag",))  # the image's entrypoint stays
    neither = _options(sandbox)
    assert (neither.entrypoint, neither.command) == (None, ())


def test_sandbox_settings_and_container_fields_meet_in_the_options() -> None:
    sandbox = _sandbox(
        hostname="web-0",
        dns_config=cri.DNSConfig(servers=["10.0.0.10"], searches=["ns.svc"], options=["ndots:5"]),
        port_mappings=[
            cri.PortMapping(protocol=cri.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")
        ],
        linux=cri.LinuxPodSandboxConfig(overhead=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)),
    )
    context = cri.LinuxContainerSecurityContext(
        run_as_user=cri.Int64Value(value=1000),
        run_as_group=cri.Int64Value(value=2000),
        readonly_rootfs=True,
        no_new_privs=True,
        capabilities=cri.Capability(add_capabilities=["CAP_NET_ADMIN"], drop_capabilities=["ALL"]),
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined),
    )
    resources = cri.LinuxContainerResources(
        memory_limit_in_bytes=256 << 20, cpu_quota=150000, cpu_period=100000
    )
    options = _options(
        sandbox,
        envs=[cri.KeyValue(key="A", value="1=2")],
        working_dir="/srv",
        tty=True,
        stdin=True,
        mounts=[cri.Mount(container_path="/data", host_path="/srv/data", readonly=True)],
        linux=cri.LinuxContainerConfig(security_context=context, resources=resources),
    )
    pod = translate.pod_options(sandbox, cni=False)
    assert (pod.hostname, pod.dns, pod.dns_search, pod.dns_options) == (
        "web-0", ("10.0.0.10",), ("ns.svc",), ("ndots:5",),
    )  # fmt: skip
    assert pod.publish == ("127.0.0.1:5353:53/udp",) and pod.network == ""
    assert pod.memory_mib is None  # the overhead alone does not size the VM: its containers do
    with_cni = translate.pod_options(sandbox, cni=True)
    assert (with_cni.network, with_cni.publish, with_cni.dns) == ("none", (), ())  # CNI's namespace instead
    assert options.pod == sandbox.id and options.hostname is None and options.publish == ()
    assert (options.env, options.workdir, options.tty, options.interactive) == (
        ("A=1=2",),
        "/srv",
        True,
        True,
    )
    assert options.user == "1000:2000" and options.read_only
    assert (options.cap_add, options.cap_drop) == (("NET_ADMIN",), ("ALL",))
    assert options.security_opt == ("no-new-privileges", "seccomp=unconfined")
    assert (options.memory_mib, options.nano_cpus) == (256, 1_500_000_000)
    assert options.mounts == ("type=bind,source=/srv/data,target=/data,readonly",)
    # The pod's own resources (with its overhead) size its VM; a container without limits gets the default.
    sized = _sandbox(
        linux=cri.LinuxPodSandboxConfig(
            resources=cri.LinuxContainerResources(
                memory_limit_in_bytes=200 << 20, cpu_quota=250000, cpu_period=100000
            ),
            overhead=cri.LinuxContainerResources(memory_limit_in_bytes=56 << 20),
        )
    )
    assert (
        translate.pod_options(sized, cni=False).memory_mib,
        translate.pod_options(sized, cni=False).cpus,
    ) == (256, 3)
    assert _options(_sandbox()).memory_mib == Settings().default_memory_mib


def test_what_a_vm_cannot_do_is_refused() -> None:
    sandbox = _sandbox(log_directory="/var/log/pods/x")
    with pytest.raises(InvalidArgument, match="propagate"):
        _options(
            sandbox,
            mounts=[
                cri.Mount(container_path="/m", host_path="/h", propagation=cri.PROPAGATION_BIDIRECTIONAL)
            ],
        )
    with pytest.raises(InvalidArgument, match=r"'kernel\.panic' is not in a separate kernel namespace"):
        _sandbox(linux=cri.LinuxPodSandboxConfig(sysctls={"kernel.panic": "1"}))
    with pytest.raises(InvalidArgument, match="devices"):
        _options(sandbox, devices=[cri.Device(container_path="/dev/x", host_path="/dev/x")])
    with pytest.raises(InvalidArgument, match="run_as_group"):
        _options(
            sandbox,
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(run_as_group=cri.Int64Value(value=1))
            ),
        )
    with pytest.raises(InvalidArgument, match="leaves"):
        translate.log_path(sandbox, cri.ContainerConfig(log_path="../../etc/passwd"))
    assert translate.log_path(sandbox, cri.ContainerConfig(log_path="c/0.log")) == "/var/log/pods/x/c/0.log"


def test_groups_paths_and_sysctls_reach_the_options() -> None:
    sandbox = _sandbox(
        linux=cri.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_forward": "1", "kernel.shmmax": "4096"})
    )
    assert sandbox.sysctls == ("kernel.shmmax=4096", "net.ipv4.ip_forward=1")
    context = cri.LinuxContainerSecurityContext(
        supplemental_groups=[1234, 5678], masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"]
    )
    options = _options(sandbox, linux=cri.LinuxContainerConfig(security_context=context))
    assert options.group_add == ("1234", "5678")
    assert options.sysctls == sandbox.sysctls
    assert (options.masked_paths, options.readonly_paths) == (("/proc/kcore",), ("/proc/sys",))
    message = specs.container_confinement(options).message()
    assert message["groups"] == ["1234", "5678"]
    assert message["sysctls"] == [["kernel.shmmax", "4096"], ["net.ipv4.ip_forward", "1"]]
    assert (message["masked_paths"], message["readonly_paths"]) == (["/proc/kcore"], ["/proc/sys"])
    # None given: the agent keeps runc's defaults, and the message says nothing.
    plain = specs.container_confinement(_options(_sandbox())).message()
    assert not {"groups", "sysctls", "masked_paths", "readonly_paths"} & set(plain)
    for bad in ("proc/kcore", "/proc/../etc"):
        with pytest.raises(InvalidArgument, match=r"not an absolute path without '\.\.'"):
            _options(
                sandbox,
                linux=cri.LinuxContainerConfig(
                    security_context=cri.LinuxContainerSecurityContext(masked_paths=[bad])
                ),
            )
    with pytest.raises(InvalidArgument, match="invalid sysctl name"):
        _sandbox(linux=cri.LinuxPodSandboxConfig(sysctls={"net/ipv4/ip_forward": "1"}))
    with pytest.raises(InvalidArgument, match="one line"):
        _sandbox(linux=cri.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_forward": "1\n"}))


def test_hyperd_names_follow_dockershim_or_are_left_to_hyperd() -> None:
    sandbox = _sandbox()
    assert translate.pod_name(sandbox.metadata) == "k8s_web_ns_u1_0"
    assert translate.hyperd_name(sandbox, Metadata("app", attempt=2)) == "k8s_app_web_ns_u1_2"
    assert translate.hyperd_name(sandbox, Metadata("x" * 200)) is None


def test_cri_log_lines_mark_partial_lines() -> None:
    lines = translate.cri_log_lines("stdout", 1700000000.25, b"one\ntwo\nthr")
    assert lines == (
        b"2023-11-14T22:13:20.250000000Z stdout F one\n"
        b"2023-11-14T22:13:20.250000000Z stdout F two\n"
        b"2023-11-14T22:13:20.250000000Z stdout P thr\n"
    )


def test_states_and_reasons() -> None:
    assert translate.container_state(specs.ContainerState.PAUSED) == cri.CONTAINER_RUNNING
    assert translate.container_state(specs.ContainerState.EXITED) == cri.CONTAINER_EXITED
    assert translate.container_state(None) == cri.CONTAINER_UNKNOWN
    assert translate.exit_reason(0, False) == "Completed"
    assert translate.exit_reason(1, False) == "Error"
    assert translate.exit_reason(137, True) == "OOMKilled"


def test_sandbox_records_move_only_along_their_table_and_survive_a_reload(tmp_path: Path) -> None:
    sandbox = _sandbox(port_mappings=[cri.PortMapping(container_port=80, host_port=8080)])
    stopped = sandbox.moved(SandboxState.NOT_READY)
    assert stopped.moved(SandboxState.NOT_READY).state is SandboxState.NOT_READY
    with pytest.raises(FailedPrecondition):
        stopped.moved(SandboxState.READY)
    store = RecordStore(tmp_path)
    store.save(stopped)
    assert RecordStore(tmp_path).sandboxes() == [stopped]
    store.delete(stopped)
    assert store.sandboxes() == []


def test_a_localhost_seccomp_profile_is_read_from_the_node(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}'
    )

    def options_with(**fields: object) -> specs.RunOptions:
        context = cri.LinuxContainerSecurityContext(**fields)  # type: ignore[arg-type]
        return _options(_sandbox(), linux=cri.LinuxContainerConfig(security_context=context))

    localhost = cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(profile))
    assert options_with(seccomp=localhost).security_opt == ("seccomp=" + profile.read_text(),)
    deprecated = options_with(seccomp_profile_path=f"localhost/{profile}")
    assert deprecated.security_opt == ("seccomp=" + profile.read_text(),)
    assert specs.container_confinement(deprecated).seccomp is not None
    profile.write_text('{"defaultAction": "SCMP_ACT_SOMETIMES"}')
    with pytest.raises(InvalidArgument, match=f"the Localhost seccomp profile {profile}: "):
        options_with(seccomp=localhost)
    profile.write_text("not json")
    with pytest.raises(InvalidArgument, match=f"the Localhost seccomp profile {profile}: .*not valid JSON"):
        options_with(seccomp=localhost)
    missing = cri.SecurityProfile(
        profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "none")
    )
    with pytest.raises(InvalidArgument, match=r"cannot read the Localhost seccomp profile .*No such file"):
        options_with(seccomp=missing)
