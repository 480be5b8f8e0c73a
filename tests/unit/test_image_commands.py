"""Pure formatting and `--change` parsing behind the image CLI commands."""

from __future__ import annotations

import datetime

import pytest

from hyper.cli.image_commands import apply_change, format_table, human_since, human_size, image_rows
from hyper.errors import InvalidArgument
from hyper.image import Image, ImageConfig

NOW = datetime.datetime(2024, 1, 10, tzinfo=datetime.UTC)


def _image(tags: tuple[str, ...]) -> Image:
    return Image(
        id="sha256:" + "ab" * 32,
        repo_tags=tags,
        manifest_digest=None,
        layers=(),
        diff_ids=(),
        config=ImageConfig(),
        created="2024-01-07T00:00:00Z",
        architecture="amd64",
        os="linux",
        size=4_260_000,
    )


@pytest.mark.parametrize(("size", "text"), [(0, "0B"), (999, "999B"), (1200, "1.2kB"), (4_261_000, "4.26MB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_human_since() -> None:
    assert human_since("2024-01-07T00:00:00Z", NOW) == "3 days ago"
    assert human_since("2024-01-09T23:00:00Z", NOW) == "1 hour ago"
    assert human_since(None, NOW) == "N/A"


def test_table_rows_per_tag_and_none() -> None:
    rows = image_rows([_image(("docker.io/library/busybox:latest", "localhost/bb:v1")), _image(())], NOW)
    lines = format_table(rows)
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split() == ["busybox", "latest", "ab" * 6, "3", "days", "ago", "4.26MB"]
    assert lines[2].split()[:2] == ["localhost/bb", "v1"]
    assert lines[3].split()[:2] == ["<none>", "<none>"]


def test_apply_change() -> None:
    config = ImageConfig()
    for change in [
        'CMD ["sh"]',
        "ENTRYPOINT /init",
        "ENV A=1",
        "ENV A=2",
        "WORKDIR /w",
        "USER app",
        "LABEL k=v",
        "STOPSIGNAL SIGINT",
    ]:
        config = apply_change(config, change)
    assert config == ImageConfig(
        env=("A=2",),
        entrypoint=("/bin/sh", "-c", "/init"),
        cmd=("sh",),
        working_dir="/w",
        user="app",
        stop_signal="SIGINT",
        labels=(("k", "v"),),
    )
    for bad in ["CMD", "RUN x", 'CMD ["sh"', "CMD [1]"]:
        with pytest.raises(InvalidArgument):
            apply_change(config, bad)
