"""`hyper kube play|down` in real VMs: a Pod manifest of two containers run as
one pod (an emptyDir and localhost shared, a hostPath seen inside, env, args,
workingDir, limits and restartPolicy honoured, the VM sized from requests),
then `kube down` leaving no QEMU, pod, container or emptyDir volume; a
manifest that fails part way leaving nothing; and a hostPort published, in
network namespaces the test makes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv, stop_hyperd

pytestmark = pytest.mark.vm

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: kubeshop
  labels: {app: shop}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1  # httpd, PID 1 of its container, ignores SIGTERM
  containers:
  - name: srv
    image: %(image)s
    command: [sh, -c]
    args:
    - >-
      echo shared > /cache/note && echo written > /etc/note && mkdir -p /www
      && echo from-srv > /www/index.html && exec httpd -f -p 8080 -h /www
    ports: [{containerPort: 8080}]
    volumeMounts: [{name: cache, mountPath: /cache}, {name: note, mountPath: /etc/note}]
    resources:
      requests: {memory: 128Mi, cpu: 100m}
  - name: reader
    image: %(image)s
    workingDir: /site
    env: [{name: WHO, value: reader}]
    command: [sh, -c]
    args:
    - >-
      until test -e /cache/note; do sleep 0.1; done; cat /cache/note; cat hello.txt; pwd;
      echo "$WHO $(WHO) $1"; until wget -qO- http://127.0.0.1:8080/; do sleep 0.1; done;
      touch /cache/ro 2>/dev/null || echo read-only
    - sh
    - first-arg
    volumeMounts:
    - {name: cache, mountPath: /cache, readOnly: true}
    - {name: site, mountPath: /site}
    resources:
      requests: {memory: 64Mi, cpu: 100m}
      limits: {memory: 96Mi}
  volumes:
  - {name: cache, emptyDir: {}}
  - name: site
    hostPath: {path: %(site)s, type: Directory}
  - name: note
    hostPath: {path: %(note)s, type: FileOrCreate}
"""


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def volumes(env: HyperEnv) -> list[str]:
    return ok(env.run("volume", "ls", "-q")).split()


def test_a_pod_manifest_plays_as_one_pod_and_goes_down_whole(hyper_env: HyperEnv, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("from-the-host\n")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(POD % {"image": BUSYBOX, "site": site, "note": site / "note"})
    assert volumes(hyper_env) == []

    lines = ok(hyper_env.run("kube", "play", str(manifest))).splitlines()
    assert lines[:3] == ["Pod:", "kubeshop", "Containers:"] and len(lines) == 5
    srv_id, reader_id = lines[3:]
    assert ok(hyper_env.run("wait", "kubeshop-reader")).strip() == "0"
    assert ok(hyper_env.run("logs", "kubeshop-reader")).splitlines() == [
        "shared",  # the emptyDir the other container wrote
        "from-the-host",  # the hostPath
        "/site",  # workingDir
        "reader reader first-arg",  # env, $(WHO) expanded as Kubernetes does, args
        "from-srv",  # localhost between the pod's containers
        "read-only",  # readOnly: true
    ]
    assert len(hyper_env.qemu_processes()) == 1  # one VM for the pod
    pod = json.loads(ok(hyper_env.run("pod", "inspect", "kubeshop")))[0]
    assert [c["Id"] for c in pod["Containers"]] == [srv_id, reader_id]
    assert pod["Labels"]["app"] == "shop"
    # Requests 128 + 64 MiB and the 128 MiB overhead, in 256 MiB steps; 0.2 CPU → 1.
    assert pod["Vm"] == {"MemoryMiB": 512, "Cpus": 1}
    srv, reader = (
        json.loads(ok(hyper_env.run("inspect", name)))[0] for name in ("kubeshop-srv", "kubeshop-reader")
    )
    assert reader["HostConfig"]["Memory"] == 96 << 20  # the limit, the container's cgroup's
    assert srv["HostConfig"]["Memory"] == 512 << 20  # none: the VM's
    assert reader["HostConfig"]["RestartPolicy"]["Name"] == "no"  # restartPolicy: Never
    assert srv["Config"]["StopTimeout"] == 1  # terminationGracePeriodSeconds
    assert srv["State"]["Running"] is True
    assert len(volumes(hyper_env)) == 1  # the emptyDir, one volume for both containers

    again = hyper_env.run("kube", "play", str(manifest))
    assert again.returncode == 125 and b"already in use" in again.stderr
    assert len(json.loads(ok(hyper_env.run("pod", "inspect", "kubeshop")))[0]["Containers"]) == 2

    down = ok(hyper_env.run("kube", "down", str(manifest))).splitlines()
    assert down[:4] == ["Pods stopped:", "kubeshop", "Pods removed:", "kubeshop"]
    assert hyper_env.qemu_processes() == []
    assert ok(hyper_env.run("pod", "ps", "-q")).split() == []
    assert hyper_env.containers() == []
    assert volumes(hyper_env) == []
    assert (site / "hello.txt").read_text() == "from-the-host\n"  # a hostPath stays
    gone = hyper_env.run("kube", "down", str(manifest))
    assert gone.returncode == 125 and b"no such pod: kubeshop" in gone.stderr
    assert (site / "note").read_text() == "written\n"  # a FileOrCreate made, written by the pod

    # `pod rm` of a played pod leaves its emptyDir volume; kube down then removes it.
    ok(hyper_env.run("kube", "play", str(manifest)))
    ok(hyper_env.run("pod", "rm", "-f", "kubeshop"))
    assert len(volumes(hyper_env)) == 1
    assert "Volumes removed:" in ok(hyper_env.run("kube", "down", str(manifest)))
    assert volumes(hyper_env) == [] and hyper_env.qemu_processes() == []


def test_a_manifest_that_fails_part_way_leaves_nothing(hyper_env: HyperEnv, tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    missing = tmp_path / "missing"
    manifest.write_text(POD % {"image": BUSYBOX, "site": missing, "note": tmp_path / "note"})
    refused = hyper_env.run("kube", "play", str(manifest))
    assert refused.returncode == 125 and b"hostPath " + str(missing).encode() in refused.stderr
    # Without a type nothing is checked first: hyperd refuses the bind once the pod exists.
    manifest.write_text(
        (POD % {"image": BUSYBOX, "site": missing, "note": tmp_path / "note"}).replace(
            ", type: Directory", ""
        )
    )
    refused = hyper_env.run("kube", "play", str(manifest))
    assert refused.returncode == 125 and b"bind source path does not exist" in refused.stderr
    assert ok(hyper_env.run("pod", "ps", "-q")).split() == []
    assert hyper_env.containers() == []
    assert volumes(hyper_env) == []
    manifest.write_text("apiVersion: v1\nkind: Deployment\n")
    refused = hyper_env.run("kube", "play", str(manifest))
    assert refused.stderr.decode().startswith("hyper: kind: Deployment is not supported")
    ok(hyper_env.run("pod", "create", "kubeshop"))
    manifest.write_text(POD % {"image": BUSYBOX, "site": tmp_path, "note": tmp_path / "note"})
    refused = hyper_env.run("kube", "down", str(manifest))
    assert refused.returncode == 125 and b"was not made by hyper kube play" in refused.stderr
    assert ok(hyper_env.run("pod", "ps", "-q")).split() != []
    assert hyper_env.qemu_processes() == []


WEB = """
apiVersion: v1
kind: Pod
metadata: {name: kubeweb}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: %(image)s
    command: [sh, -c]
    args: ['mkdir -p /www && echo "page of $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www']
    ports: [{containerPort: 80, hostPort: 8090}, {containerPort: 81}]
  - name: ticker
    image: %(image)s
    command: [sh, -c, 'echo tick; exit 3']
"""


def test_a_host_port_is_published_and_restart_always_restarts(hyper_env: HyperEnv, tmp_path: Path) -> None:
    """In network namespaces of the test's own (tests/support/netns.py), hyperd on its bridge."""
    from tests.support.netns import HOST_IP, NetLab

    manifest = tmp_path / "web.yaml"
    manifest.write_text(WEB % {"image": BUSYBOX})
    with NetLab() as lab:

        def hyper(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ["ip", "netns", "exec", lab.host, sys.executable, "-m", "hyper.cli.main", *args],
                capture_output=True,
                env=hyper_env.environ(HYPER_BRIDGE="bridge"),
                timeout=300,
                check=False,
            )

        before = lab.listening()
        try:
            ok(hyper("kube", "play", str(manifest)))
            until(lambda: lab.fetch(lab.host, "http://127.0.0.1:8090/", 5).returncode == 0, "the hostPort")
            # $(hostname) names no env variable: left to the shell, as in Kubernetes.
            assert lab.fetch(lab.outside, f"http://{HOST_IP}:8090/").stdout.strip() == "page of kubeweb"
            pod = json.loads(ok(hyper("pod", "inspect", "kubeweb")))[0]
            assert pod["Options"]["publish"] == ["8090:80/tcp"]  # containerPort 81 has no hostPort

            def restarts() -> int:
                state = json.loads(ok(hyper("inspect", "kubeweb-ticker")))[0]
                return int(state["RestartCount"])

            until(lambda: restarts() >= 2, "restartPolicy Always (the default) to restart the ticker")
            ok(hyper("kube", "down", str(manifest)))
            assert hyper_env.qemu_processes() == []
            until(lambda: lab.listening() == before, "the hostPort to be free")
        finally:
            hyper("kube", "down", str(manifest))
            stop_hyperd(hyper_env)  # before its network namespace goes


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 180
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)
