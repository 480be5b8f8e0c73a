"""The mount options of every front end: parsing, canonical forms, and the bad inputs refused."""

from __future__ import annotations

import pytest

from hyper.errors import InvalidArgument
from hyper.storage.mounts import (
    Mount,
    MountType,
    check_unique,
    check_volumes_from,
    from_api_mount,
    inherited_mounts,
    merge_mounts,
    parse_all,
    parse_mount,
    parse_tmpfs,
    parse_volume,
    parse_volume_size,
    parse_volumes_from,
    storage_size,
    volume_size,
    with_image_volumes,
)


def test_volume_flag_forms() -> None:
    assert parse_volume("/srv/data:/data") == Mount(MountType.BIND, "/data", "/srv/data", create_source=True)
    assert parse_volume("/srv/data:/data:ro").read_only
    assert parse_volume("db:/var/lib/db") == Mount(MountType.VOLUME, "/var/lib/db", "db")
    assert parse_volume("db:/var/lib/db:ro,nocopy") == Mount(
        MountType.VOLUME, "/var/lib/db", "db", read_only=True, no_copy=True
    )
    assert parse_volume("/cache") == Mount(MountType.VOLUME, "/cache", anonymous=True)
    assert parse_volume("/srv/x/../y:/a/./b/:z").source == "/srv/y"
    assert parse_volume("/srv/x:/a/./b/").target == "/a/b"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bad name!:/data", "invalid volume name"),
        ("a:/data", "invalid volume name"),  # Docker's rule: two characters at least
        ("db:data", "absolute path"),
        ("db:/", "/ cannot be mounted over"),
        ("db:/proc", "/proc cannot be mounted over"),
        ("db:/proc/sys", "/proc cannot be mounted over"),
        ("/srv:/x:rshared", "do not propagate"),
        ("/srv:/x:bogus", "invalid volume option"),
        ("/srv:/x:nocopy", "nocopy applies to volumes"),
        ("a:b:c:d", "invalid volume specification"),
        (":/x", "invalid volume specification"),
    ],
)
def test_bad_volume_flags(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_volume(text)


def test_mount_flag_forms() -> None:
    assert parse_mount("type=bind,source=/srv,target=/x,readonly") == Mount(
        MountType.BIND, "/x", "/srv", read_only=True
    )
    assert parse_mount("type=volume,src=v1,dst=/x,ro=false") == Mount(MountType.VOLUME, "/x", "v1")
    assert parse_mount("target=/x") == Mount(MountType.VOLUME, "/x", anonymous=True)
    assert parse_mount("type=tmpfs,destination=/t,tmpfs-size=64m,tmpfs-mode=1770") == Mount(
        MountType.TMPFS, "/t", tmpfs_size=64 << 20, tmpfs_mode=0o1770
    )
    assert parse_mount('type=bind,"source=/a,b",target=/x').source == "/a,b"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("type=nfs,target=/x", "invalid mount type"),
        ("type=bind,source=/a", "has no target"),
        ("type=bind,source=rel,target=/x", "absolute host path"),
        ("type=bind,source=/a,target=/x,bind-propagation=shared", "do not propagate"),
        ("type=volume,source=v!,target=/x", "invalid volume name"),
        ("type=volume,target=/x,volume-driver=nfs", "driver"),
        ("type=tmpfs,source=/a,target=/x", "takes no source"),
        ("type=tmpfs,target=/x,tmpfs-size=lots", "invalid tmpfs-size"),
        ("type=tmpfs,target=/x,tmpfs-mode=999", "invalid tmpfs mode"),
        ("type=bind,source=/a,target=/x,colour=red", "unknown --mount key"),
        ("type=bind,source=/a,target=/x,readonly=maybe", "use true or false"),
        ("type=bind,source=/a,target=/x,target=/y", "twice"),
    ],
)
def test_bad_mount_flags(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_mount(text)


def test_tmpfs_flag() -> None:
    assert parse_tmpfs("/run") == Mount(MountType.TMPFS, "/run")
    assert parse_tmpfs("/run:rw,size=65536k,mode=1777,exec") == Mount(
        MountType.TMPFS, "/run", tmpfs_size=64 << 20, tmpfs_mode=0o1777, tmpfs_flags=("exec",)
    )
    assert parse_tmpfs("/run:ro").read_only
    with pytest.raises(InvalidArgument, match="invalid tmpfs option"):
        parse_tmpfs("/run:uid=evil,foo")
    with pytest.raises(InvalidArgument, match="absolute path"):
        parse_tmpfs("run")


@pytest.mark.parametrize(
    "mount",
    [
        Mount(MountType.BIND, "/x", '/a,b"c', read_only=True, create_source=True),
        Mount(MountType.VOLUME, "/x", "0123abcd", no_copy=True, anonymous=True),
        Mount(MountType.TMPFS, "/t", tmpfs_size=1024, tmpfs_mode=0o700, tmpfs_flags=("exec", "dev")),
        Mount(MountType.VOLUME, "/x", anonymous=True, volume_size=64 << 20),
    ],
)
def test_canonical_round_trip(mount: Mount) -> None:
    assert parse_mount(mount.canonical()) == mount


def test_duplicates_and_image_volumes() -> None:
    with pytest.raises(InvalidArgument, match="duplicate mount point: /x"):
        parse_all(volumes=["/a:/x"], mounts=["type=volume,target=/x/"])
    with pytest.raises(InvalidArgument, match="duplicate mount point"):
        check_unique([parse_tmpfs("/t"), parse_volume("v1:/t")])
    mounts = (parse_volume("v1:/data"),)
    extended = with_image_volumes(mounts, ["/data", "/logs", "/logs/"])
    assert extended == (*mounts, Mount(MountType.VOLUME, "/logs", anonymous=True))


def test_api_mounts() -> None:
    assert from_api_mount(
        {
            "Type": "bind",
            "Source": "/srv",
            "Target": "/x",
            "ReadOnly": True,
            "BindOptions": {"Propagation": "rprivate"},
        }
    ) == Mount(MountType.BIND, "/x", "/srv", read_only=True)
    assert from_api_mount({"Type": "volume", "Target": "/v", "VolumeOptions": {"NoCopy": True}}) == Mount(
        MountType.VOLUME, "/v", anonymous=True, no_copy=True
    )
    assert from_api_mount(
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 4096, "Mode": 0o755}}
    ) == Mount(MountType.TMPFS, "/t", tmpfs_size=4096, tmpfs_mode=0o755)
    with pytest.raises(InvalidArgument, match="do not propagate"):
        from_api_mount(
            {"Type": "bind", "Source": "/s", "Target": "/x", "BindOptions": {"Propagation": "shared"}}
        )
    with pytest.raises(InvalidArgument, match="must be an object"):
        from_api_mount("nope")  # type: ignore[arg-type]


def test_volumes_from_forms() -> None:
    assert parse_volumes_from("db") == ("db", None)
    assert parse_volumes_from("db:ro") == ("db", True)
    assert parse_volumes_from("db:rw") == ("db", False)
    for bad in ("", ":ro", "db:rx", "db:ro:rw"):
        with pytest.raises(InvalidArgument, match="--volumes-from"):
            check_volumes_from(["ok", bad])


def test_inherited_mounts_keep_volumes_and_binds_not_tmpfs_nor_anonymity() -> None:
    source = [
        "type=volume,source=db,target=/db",
        "type=volume,source=abc123,target=/cache,volume-anonymous",
        "type=bind,source=/srv,target=/srv,readonly,bind-create-src",
        "type=tmpfs,target=/run",
    ]
    kept = inherited_mounts(source, None)
    assert [(m.type, m.source, m.target, m.read_only) for m in kept] == [
        (MountType.VOLUME, "db", "/db", False),
        (MountType.VOLUME, "abc123", "/cache", False),
        (MountType.BIND, "/srv", "/srv", True),
    ]
    assert not any(m.anonymous or m.create_source for m in kept)  # rm -v of the taker leaves them
    assert all(m.read_only for m in inherited_mounts(source, True))
    assert not any(m.read_only for m in inherited_mounts(source, False))
    with pytest.raises(InvalidArgument, match="no name yet"):
        inherited_mounts(["type=volume,target=/x"], None)


def test_own_mounts_win_over_inherited_ones_and_two_inherited_conflict() -> None:
    own = [parse_volume("mine:/db")]
    inherited = inherited_mounts(
        ["type=volume,source=db,target=/db", "type=volume,source=ll,target=/l"], None
    )
    merged = merge_mounts(own, inherited)
    assert [(m.source, m.target) for m in merged] == [("mine", "/db"), ("ll", "/l")]
    with pytest.raises(InvalidArgument, match="duplicate mount point: /l"):
        merge_mounts(own, (*inherited, *inherited_mounts(["type=volume,source=mm,target=/l"], None)))


def test_storage_opt_size() -> None:
    assert storage_size([]) is None
    assert storage_size(["size=512m"]) == 512 << 20
    assert storage_size(["size=20G"]) == 20 << 30
    assert storage_size(["size=1gb", "size=2GB"]) == 2 << 30  # the last one, as Docker
    assert storage_size([f"size={64 << 20}"]) == 64 << 20
    for bad, words in (
        ("dm.basesize=1G", "invalid --storage-opt"),
        ("size", "invalid --storage-opt"),
        ("size=lots", "invalid storage size"),
        ("size=1.5g", "invalid storage size"),
        ("size=63m", "out of range"),
        ("size=2t", "out of range"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            storage_size([bad])


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({"Type": "tmpfs", "Target": "/x", "TmpfsOptions": {"SizeBytes": "big"}}, "SizeBytes of a mount"),
        ({"Type": "tmpfs", "Target": "/x", "TmpfsOptions": {"Mode": True}}, "Mode of a mount"),
        ({"Type": "volume", "Target": 5}, "Target of a mount must be a string"),
        ({"Type": "volume", "Target": "/x", "VolumeOptions": {"DriverConfig": "x"}}, "must be an object"),
        ({"Type": "volume", "Target": "/x", "VolumeOptions": {"Labels": {"a": 1}}}, "VolumeOptions.Labels"),
        (
            {"Type": "bind", "Source": "/a", "Target": "/x", "VolumeOptions": {"Labels": {"a": "b"}}},
            "applies to",
        ),
        (
            {"Type": "bind", "Source": "/a", "Target": "/x", "BindOptions": {"CreateMountpoint": True}},
            "Create",
        ),
        ({"Type": "volume", "Target": "/x", "ClusterOptions": {"x": 1}}, "mount setting ClusterOptions"),
        ("not an object", "must be an object"),
    ],
)
def test_api_mounts_refuse_what_they_do_not_honour(item: object, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        from_api_mount(item)  # type: ignore[arg-type]


def test_api_mount_paths_with_commas_and_quotes_stay_whole() -> None:
    mount = from_api_mount({"Type": "bind", "Source": '/a,"b', "Target": "/x,y"})
    assert (mount.source, mount.target) == ('/a,"b', "/x,y")
    assert parse_mount(mount.canonical()) == mount
    labelled = parse_mount("type=volume,source=v1,target=/x,volume-label=a=b,volume-label=c=")
    assert labelled.volume_labels == (("a", "b"), ("c", ""))
    assert parse_mount(labelled.canonical()) == labelled
    api = from_api_mount(
        {"Type": "volume", "Source": "v1", "Target": "/x", "VolumeOptions": {"Labels": {"a": "b"}}}
    )
    assert api.volume_labels == (("a", "b"),)
    with pytest.raises(InvalidArgument, match="volume-label applies to volumes"):
        parse_mount("type=tmpfs,target=/x,volume-label=a=b")


def test_volume_sizes_and_their_bad_forms() -> None:
    assert parse_volume_size("64m") == 64 << 20
    assert parse_volume_size(" 10GiB ") == 10 << 30
    assert parse_volume_size(str(8 << 20)) == 8 << 20
    assert volume_size({}) is None and volume_size({"size": "1g"}) == 1 << 30
    for bad, words in (
        ("", "invalid volume size"),
        ("lots", "invalid volume size"),
        ("1.5g", "invalid volume size"),
        ("-1g", "invalid volume size"),
        ("3m", "out of range"),
        ("17t", "out of range"),
        ("0", "out of range"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            parse_volume_size(bad)
    with pytest.raises(InvalidArgument, match="volume option 'type' is not supported"):
        volume_size({"type": "tmpfs", "size": "1g"})


def test_a_mount_may_size_the_volume_it_creates() -> None:
    mount = parse_mount("type=volume,target=/data,volume-opt=size=64m")
    assert mount.volume_size == 64 << 20 and mount.anonymous
    assert parse_mount(mount.canonical()) == mount
    api = from_api_mount(
        {"Type": "volume", "Target": "/d", "VolumeOptions": {"DriverConfig": {"Options": {"size": "1g"}}}}
    )
    assert api.volume_size == 1 << 30
    for text, words in (
        ("type=volume,target=/d,volume-opt=type=nfs", "volume option 'type'"),
        ("type=volume,target=/d,volume-opt=size=huge", "invalid volume size"),
        ("type=bind,source=/a,target=/d,volume-opt=size=1g", "volume-opt applies to volumes"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            parse_mount(text)
    with pytest.raises(InvalidArgument, match=r"DriverConfig\.Options"):
        from_api_mount({"Type": "volume", "Target": "/d", "VolumeOptions": {"DriverConfig": {"Options": 1}}})
