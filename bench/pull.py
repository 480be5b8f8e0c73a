"""Pull benchmark: `hyper pull` against `skopeo copy` from the same local registry.

Builds a multi-layer image of about 230 MB from Debian packages (each of
libllvm14, gcc-12, cpp-12 and libstdc++-12-dev fetched with `apt-get download`,
unpacked with `dpkg-deb -x` and made one gzip layer), pushes it with skopeo to
Debian's `docker-registry` on 127.0.0.1, then alternates N times (default 5):
  (a) `hyper pull -q` into an empty store;
  (b) `skopeo copy docker://… oci:DIR` into an empty directory.
Prints the medians and the ratio a/b (target ≤ 1.2), then the unpack+conversion
throughput of the pulled image's layers into layer disks (uncompressed MB/s).

Usage: python bench/pull.py [-n N] [--packages P ...]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.registry import RegistryServer, skopeo  # noqa: E402

from hyper.image import ImageStore  # noqa: E402

PACKAGES = ("libllvm14", "gcc-12", "cpp-12", "libstdc++-12-dev")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def build_layout(work: Path, packages: tuple[str, ...]) -> tuple[Path, int]:
    """An OCI layout with one gzip layer per package; returns it and the uncompressed size."""
    debs = work / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", *packages], cwd=debs, check=True, capture_output=True)
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids, uncompressed = [], [], 0
    for deb in sorted(debs.glob("*.deb")):
        tree = work / "trees" / deb.stem
        tree.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        plain = work / f"{deb.stem}.tar"
        with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as archive:
            for entry in sorted(tree.iterdir()):
                archive.add(entry, arcname=entry.name)
        uncompressed += plain.stat().st_size
        diff_ids.append(sha256_file(plain))
        packed = work / f"{deb.stem}.tar.gz"
        with (
            plain.open("rb") as source,
            packed.open("wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as target,
        ):
            shutil.copyfileobj(source, target, 1 << 20)
        digest = sha256_file(packed)
        size = packed.stat().st_size
        packed.rename(blobs / digest.split(":")[1])
        plain.unlink()
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (blobs / config_digest.split(":")[1]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_digest.split(":")[1]).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    return layout, uncompressed


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hyper-bench-pull-") as scratch:
        work = Path(scratch)
        print(f"building the image from {', '.join(args.packages)} …", flush=True)
        layout, uncompressed = build_layout(work, tuple(args.packages))
        compressed = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
        print(f"image: {uncompressed / 1e6:.0f} MB uncompressed, {compressed / 1e6:.0f} MB compressed")
        with RegistryServer(work / "registry") as registry:
            name = f"{registry.host}/bench/image:v1"
            pushed = skopeo(
                "copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{name}", timeout=600
            )
            if pushed.returncode != 0:
                raise SystemExit(f"skopeo push failed: {pushed.stderr}")
            hyper_times, skopeo_times = [], []
            base_env = dict(os.environ, HYPER_REGISTRY_CONFIG=str(work / "none.json"))
            for run in range(args.n):
                state = work / f"state-{run}"
                env = dict(base_env, HYPER_STATE_DIR=str(state))
                hyper_times.append(timed([sys.executable, "-m", "hyper.cli.main", "pull", "-q", name], env))
                target = work / f"skopeo-{run}"
                copy = ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false"]
                skopeo_times.append(timed([*copy, f"docker://{name}", f"oci:{target}:v1"], base_env))
                print(
                    f"run {run + 1}: hyper pull {hyper_times[-1]:.2f}s, skopeo copy {skopeo_times[-1]:.2f}s"
                )
                if run:
                    shutil.rmtree(state)
                shutil.rmtree(target)
            store = ImageStore(work / "state-0" / "images")
            image = store.get(name)
            start = time.perf_counter()
            disks = store.layer_disks(image)
            convert = time.perf_counter() - start
        hyper_median, skopeo_median = statistics.median(hyper_times), statistics.median(skopeo_times)
        print()
        print(
            f"hyper pull  median {hyper_median:.2f}s  ({compressed / 1e6 / hyper_median:.0f} MB/s compressed)"
        )
        rate = compressed / 1e6 / skopeo_median
        print(f"skopeo copy median {skopeo_median:.2f}s  ({rate:.0f} MB/s compressed)")
        print(f"ratio hyper/skopeo: {hyper_median / skopeo_median:.2f}  (target ≤ 1.2)")
        print(
            f"unpack+conversion ({disks[0].fs_type}): {convert:.2f}s for {uncompressed / 1e6:.0f} MB "
            f"= {uncompressed / 1e6 / convert:.0f} MB/s"
        )
        print(f"machine: {os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().release}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
