"""The streaming server's tokens, addresses and protocol messages, without a server."""

from __future__ import annotations

import json

import pytest
from cri_api.v1 import api_pb2 as cri

from hyper.cri import remotecommand, streaming
from hyper.errors import InvalidArgument, ResourceExhausted


def test_a_token_serves_once_for_its_kind_until_it_expires() -> None:
    now = [100.0]
    tokens = streaming.Tokens(ttl=60, clock=lambda: now[0])
    request = cri.ExecRequest(container_id="c", cmd=["sh"])
    token = tokens.issue("exec", request)
    assert tokens.take("attach", token) is None  # another kind's URL does not take it
    assert tokens.take("exec", token) == request
    assert tokens.take("exec", token) is None  # once
    late = tokens.issue("exec", request)
    now[0] += 61
    assert tokens.take("exec", late) is None
    assert tokens.take("exec", "made-up") is None


def test_pending_tokens_are_bounded_and_expired_ones_make_room() -> None:
    now = [0.0]
    tokens = streaming.Tokens(ttl=1, clock=lambda: now[0])
    for _ in range(streaming.MAX_PENDING):
        tokens.issue("exec", cri.ExecRequest())
    with pytest.raises(ResourceExhausted):
        tokens.issue("exec", cri.ExecRequest())
    now[0] = 2
    assert tokens.issue("exec", cri.ExecRequest())


def test_streaming_addresses() -> None:
    assert streaming.parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert streaming.parse_address("[::1]:10010") == ("::1", 10010)
    assert streaming.parse_address("10.0.0.5") == ("10.0.0.5", 0)
    for bad in ("127.0.0.1:http", "127.0.0.1:70000", ":80"):
        with pytest.raises(InvalidArgument):
            streaming.parse_address(bad)


def test_status_documents_are_the_kubelets() -> None:
    assert json.loads(remotecommand.status(0)) == {"metadata": {}, "status": "Success"}
    failure = json.loads(remotecommand.status(2, ["false"]))
    assert failure["status"] == "Failure" and failure["reason"] == "NonZeroExitCode"
    assert failure["details"] == {"causes": [{"reason": "ExitCode", "message": "2"}]}
    assert json.loads(remotecommand.internal_error("gone"))["code"] == 500


def test_terminal_sizes() -> None:
    assert remotecommand.terminal_size(b'{"Width": 100, "Height": 30}') == (30, 100)
    for bad in (b"", b"{}", b'{"Width": 0, "Height": 3}', b"[1]", b'{"Width": "x", "Height": 1}'):
        assert remotecommand.terminal_size(bad) is None


def test_port_forward_ports_come_from_the_query_else_the_request() -> None:
    from aiohttp.test_utils import make_mocked_request

    from hyper.cri import portforward

    def ports(query: str, fallback: list[int]) -> list[int]:
        return portforward.query_ports(make_mocked_request("GET", f"/portforward/t{query}"), fallback)

    assert ports("?port=8080&port=53", [1]) == [8080, 53]
    assert ports("", [80]) == [80]
    for query in ("", "?port=http", "?port=0", "?port=65536"):
        with pytest.raises(ValueError):
            ports(query, [])


def test_spdy_versions_are_the_clients_first_that_the_server_has() -> None:
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from hyper.cri import spdystreams

    def offered(*versions: str) -> object:
        headers = CIMultiDict(
            [("Upgrade", "SPDY/3.1")] + [(spdystreams.HEADER_PROTOCOL, v) for v in versions]
        )
        request = make_mocked_request("GET", "/exec/t", headers=headers)
        assert spdystreams.is_spdy(request)
        return spdystreams.negotiate(request, remotecommand.SPDY_PROTOCOLS)

    assert offered("v5.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io") == "v3.channel.k8s.io"
    assert offered("v2.channel.k8s.io, v4.channel.k8s.io") == "v2.channel.k8s.io"
    refused = offered("channel.k8s.io")
    assert getattr(refused, "status", None) == 403 and "unable to negotiate" in str(
        getattr(refused, "text", "")
    )
