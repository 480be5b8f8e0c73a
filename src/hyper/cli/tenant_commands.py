"""`hyper tenant …`: the admin's commands for tenants, through hyperd's local socket.

create, ls, inspect, quota, rm; key create|ls|revoke; usage; audit; public
add|rm|ls (images every tenant sees); cert (a self-signed pair for a trial
of `hyperd --tenant-listen`, made here with openssl, no hyperd needed).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hyper.cli.container_commands import connect_daemon, format_columns
from hyper.cli.context import CliContext
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenant = subparsers.add_parser("tenant", help="manage tenants, their keys and quotas (hyperd's admin)")
    commands = tenant.add_subparsers(dest="tenant_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a tenant")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="containers, vcpus, memory (8g), volume-bytes, volume-size, networks, published-ports,"
        " api-requests, boots-per-minute",
    )
    create.add_argument("--keystone-project", metavar="ID", help="the Keystone project that acts as it")
    create.set_defaults(func=cmd_create)

    ls = commands.add_parser("ls", help="list tenants")
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=cmd_ls)

    inspect = commands.add_parser("inspect", help="show tenants as JSON: quotas, holdings, usage, keys")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.set_defaults(func=cmd_inspect)

    quota = commands.add_parser("quota", help="change a tenant's quotas")
    quota.add_argument("name", metavar="NAME")
    quota.add_argument("quotas", nargs="+", metavar="NAME=VALUE")
    quota.set_defaults(func=cmd_quota)

    rm = commands.add_parser("rm", help="remove tenants (with -f, and everything they have)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument(
        "-f", "--force", action="store_true", help="remove their containers, networks and volumes too"
    )
    rm.set_defaults(func=cmd_rm)

    key = commands.add_parser("key", help="a tenant's access keys")
    keys = key.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    key_create = keys.add_parser("create", help="make a key; its secret is shown once")
    key_create.add_argument("name", metavar="TENANT")
    key_create.add_argument("--format", choices=["text", "json"], default="text")
    key_create.set_defaults(func=cmd_key_create)
    key_ls = keys.add_parser("ls", help="list a tenant's keys")
    key_ls.add_argument("name", metavar="TENANT")
    key_ls.set_defaults(func=cmd_key_ls)
    key_revoke = keys.add_parser("revoke", help="revoke keys: they stop working at once")
    key_revoke.add_argument("name", metavar="TENANT")
    key_revoke.add_argument("keys", nargs="+", metavar="KEY_ID")
    key_revoke.set_defaults(func=cmd_key_revoke)

    usage = commands.add_parser("usage", help="vCPU-, memory- and container-seconds, for billing")
    usage.add_argument("name", nargs="?", metavar="TENANT")
    usage.add_argument("--format", choices=["table", "json"], default="table")
    usage.set_defaults(func=cmd_usage)

    audit = commands.add_parser("audit", help="the audit log of tenants' requests")
    audit.add_argument("--tenant", metavar="NAME")
    audit.add_argument("--since", type=float, metavar="UNIX_SECONDS")
    audit.add_argument("-n", "--limit", type=int, metavar="N", help="the last N entries")
    audit.add_argument("--verify", action="store_true", help="check the log's hash chain")
    audit.add_argument("--format", choices=["table", "json"], default="table")
    audit.set_defaults(func=cmd_audit)

    public = commands.add_parser("public", help="images every tenant sees")
    publics = public.add_subparsers(dest="public_command", metavar="COMMAND", required=True)
    public_add = publics.add_parser("add", help="make images of hyperd's store public")
    public_add.add_argument("images", nargs="+", metavar="IMAGE")
    public_add.set_defaults(func=cmd_public_add)
    public_rm = publics.add_parser("rm", help="make images private again (tenants' copies stay)")
    public_rm.add_argument("images", nargs="+", metavar="IMAGE")
    public_rm.set_defaults(func=cmd_public_rm)
    public_ls = publics.add_parser("ls", help="list public images")
    public_ls.set_defaults(func=cmd_public_ls)

    cert = commands.add_parser("cert", help="make a self-signed TLS pair for --tenant-listen (a trial)")
    cert.add_argument("--host", action="append", required=True, metavar="NAME_OR_IP")
    cert.add_argument("--dir", type=Path, default=Path("."), metavar="DIR")
    cert.add_argument("--days", type=int, default=90)
    cert.set_defaults(func=cmd_cert)


def _tenant_path(name: str, *rest: str) -> str:
    return "/v1/tenants/" + "/".join([quote(name, safe=""), *(quote(r, safe="") for r in rest)])


def _date(seconds: float | None) -> str:
    if not seconds:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_create(args: argparse.Namespace, ctx: CliContext) -> int:
    body = {"name": args.name, "quotas": args.quota, "keystone_project": args.keystone_project}
    with connect_daemon(ctx) as client:
        tenant = client.admin_document("POST", "/v1/tenants", json=body)
    print(tenant["id"], file=ctx.stdout)
    return 0


def cmd_ls(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        tenants = client.admin_document("GET", "/v1/tenants")
    if args.format == "json":
        for tenant in tenants:
            print(json.dumps(tenant), file=ctx.stdout)
        return 0
    if args.quiet:
        for tenant in tenants:
            print(tenant["name"], file=ctx.stdout)
        return 0
    rows = [["TENANT ID", "NAME", "CONTAINERS", "VCPUS", "MEMORY", "CREATED"]]
    for t in tenants:
        holds, quotas = t["holds"], t["quotas"]
        rows.append(
            [
                t["id"],
                t["name"],
                f"{holds['containers']}/{quotas['containers']}",
                f"{holds['vcpus']}/{quotas['vcpus']}",
                f"{holds['memory']}/{quotas['memory']} MiB",
                _date(t["created"]),
            ]
        )
    print(format_columns(rows), file=ctx.stdout)
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: CliContext) -> int:
    documents: list[Any] = []
    failed = False
    with connect_daemon(ctx) as client:
        for name in args.names:
            try:
                documents.append(client.admin_document("GET", _tenant_path(name)))
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr)
                failed = True
    print(json.dumps(documents, indent=4), file=ctx.stdout)
    return 1 if failed else 0


def cmd_quota(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        tenant = client.admin_document(
            "POST", _tenant_path(args.name, "quotas"), json={"quotas": args.quotas}
        )
    print(json.dumps(tenant["quotas"], indent=4), file=ctx.stdout)
    return 0


def cmd_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    failed = False
    with connect_daemon(ctx) as client:
        for name in args.names:
            try:
                client.admin_document(
                    "DELETE", _tenant_path(name), params={"force": "1" if args.force else "0"}
                )
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr)
                failed = True
                continue
            print(name, file=ctx.stdout)
    return 1 if failed else 0


def cmd_key_create(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        key = client.admin_document("POST", _tenant_path(args.name, "keys"))
    if args.format == "json":
        print(json.dumps(key), file=ctx.stdout)
        return 0
    headers = json.dumps({"HttpHeaders": {"Authorization": f"Bearer {key['token']}"}})
    print(
        f"Key ID:  {key['id']}\n"
        f"Secret:  {key['secret']}\n"
        f"Token:   {key['token']}\n"
        "The secret is shown this once: hyperd keeps only its hash.\n\n"
        "For the docker CLI, in $DOCKER_CONFIG/config.json (~/.docker/config.json):\n"
        f"  {headers}",
        file=ctx.stdout,
    )
    return 0


def cmd_key_ls(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        keys = client.admin_document("GET", _tenant_path(args.name, "keys"))
    rows = [["KEY ID", "CREATED", "REVOKED"]]
    rows += [[k["id"], _date(k["created"]), _date(k["revoked"])] for k in keys]
    print(format_columns(rows), file=ctx.stdout)
    return 0


def cmd_key_revoke(args: argparse.Namespace, ctx: CliContext) -> int:
    failed = False
    with connect_daemon(ctx) as client:
        for key_id in args.keys:
            try:
                client.admin_document("DELETE", _tenant_path(args.name, "keys", key_id))
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr)
                failed = True
                continue
            print(key_id, file=ctx.stdout)
    return 1 if failed else 0


def cmd_usage(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        params = {"tenant": args.name} if args.name else None
        usage = client.admin_document("GET", "/v1/tenant-usage", params=params)
    if args.format == "json":
        print(json.dumps(usage, indent=4), file=ctx.stdout)
        return 0
    rows = [["TENANT", "VCPU-SECONDS", "MEMORY GIB-SECONDS", "CONTAINER-SECONDS"]]
    rows += [
        [
            u["name"],
            f"{u['vcpu_seconds']:.1f}",
            f"{u['memory_gib_seconds']:.1f}",
            f"{u['container_seconds']:.1f}",
        ]
        for u in usage
    ]
    print(format_columns(rows), file=ctx.stdout)
    return 0


def cmd_audit(args: argparse.Namespace, ctx: CliContext) -> int:
    params = {"verify": "1"} if args.verify else {}
    if args.tenant:
        params["tenant"] = args.tenant
    if args.since is not None:
        params["since"] = str(args.since)
    if args.limit:
        params["limit"] = str(args.limit)
    with connect_daemon(ctx) as client:
        answer = client.admin_document("GET", "/v1/tenant-audit", params=params)
    if args.verify:
        print(f"{answer['verified']} entries, the chain intact ({answer['path']})", file=ctx.stdout)
        return 0
    if args.format == "json":
        for entry in answer:
            print(json.dumps(entry), file=ctx.stdout)
        return 0
    rows = [["SEQ", "TIME", "TENANT", "KEY", "ACTION", "OBJECT", "RESULT"]]
    rows += [
        [
            str(e["seq"]),
            _date(e["time"]),
            e["tenant_name"],
            e["key"],
            e["action"],
            e["object"][:24],
            str(e["result"]),
        ]
        for e in answer
    ]
    print(format_columns(rows), file=ctx.stdout)
    return 0


def cmd_public_add(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        for image in args.images:
            answer = client.admin_document("POST", "/v1/public-images", json={"image": image})
            print(f"{answer['reference']} ({answer['image_id'][7:19]}) is public", file=ctx.stdout)
    return 0


def cmd_public_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        for image in args.images:
            answer = client.admin_document("DELETE", "/v1/public-images/" + quote(image, safe=""))
            print(f"{answer['reference']} is no longer public", file=ctx.stdout)
    return 0


def cmd_public_ls(args: argparse.Namespace, ctx: CliContext) -> int:
    del args
    with connect_daemon(ctx) as client:
        public = client.admin_document("GET", "/v1/public-images")
    rows = [["REFERENCE", "IMAGE ID"]] + [[p["reference"], p["image_id"][7:19]] for p in public]
    print(format_columns(rows), file=ctx.stdout)
    return 0


def subject_alt_names(hosts: list[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(f"DNS:{host}")
        else:
            names.append(f"IP:{host}")
    return ",".join(names)


def make_self_signed(hosts: list[str], directory: Path, days: int) -> tuple[Path, Path, Path]:
    """cert.pem and key.pem for hyperd, and ca.pem (the same certificate) for clients."""
    if shutil.which("openssl") is None:
        raise FailedPrecondition("openssl is not installed", hint="install Debian's openssl")
    if days < 1:
        raise InvalidArgument("--days must be at least 1")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    with tempfile.TemporaryDirectory() as work:
        temporary_key = Path(work) / "key.pem"
        done = subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(temporary_key), "-out", str(cert), "-days", str(days),
                "-subj", f"/CN={hosts[0]}", "-addext", f"subjectAltName={subject_alt_names(hosts)}",
                "-addext", "extendedKeyUsage=serverAuth",
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise FailedPrecondition(f"openssl could not make the pair: {done.stderr.strip()[-500:]}")
        temporary_key.chmod(0o600)
        shutil.move(temporary_key, key)
    shutil.copyfile(cert, ca)
    return cert, key, ca


def cmd_cert(args: argparse.Namespace, ctx: CliContext) -> int:
    cert, key, ca = make_self_signed(args.host, args.dir, args.days)
    print(
        f"{cert} and {key}: for hyperd --tls-cert {cert} --tls-key {key}\n"
        f"{ca}: for clients (DOCKER_CERT_PATH={ca.parent} DOCKER_TLS_VERIFY=1)",
        file=ctx.stdout,
    )
    return 0
