"""Basic credentials and TLS: right, wrong, missing; a real handshake, a wrong CA refused."""

from __future__ import annotations

import asyncio
import base64
import collections
import subprocess
import sys
import time

import grpc
import pytest

from fastext import METHOD_PATH
from fastext._proto.extension_pb2 import MediaStreamMessage
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.synthetic import to_pixel_format
from fastext.front.security import REJECT_WAIT_S
from tests.helpers import ORANGE, descriptor, embedded, exchange, solid, tags

pytest.importorskip("cryptography")
from tests.certs import make_ca, make_leaf  # noqa: E402

# portable: TLS and credentials are grpc's and Python's (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

SECRET = "pa55-w0rd-never-logged"
FRAME = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)
MESSAGES = [descriptor(32, 32), embedded(2, FRAME)]


def basic(user: str, password: str) -> tuple[tuple[str, str], ...]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (("x-ms-authentication", f"Basic {token}"),)


@pytest.fixture
def auth_server(make_server):
    return make_server(auth_username="lva", auth_password=SECRET)


def test_auth_right_credentials_pass(auth_server):
    replies, code, _ = exchange(auth_server.target, MESSAGES, metadata=basic("lva", SECRET))
    assert code == grpc.StatusCode.OK and tags(replies[1]) == ["light"]


@pytest.mark.parametrize(
    "metadata",
    [None, basic("lva", "wrong"), basic("other", SECRET), (("x-ms-authentication", "Bearer abc"),)],
    ids=["missing", "wrong-password", "wrong-user", "not-basic"],
)
def test_auth_refused_before_any_frame(auth_server, metadata, caplog):
    caplog.set_level("DEBUG")
    replies, code, details = exchange(auth_server.target, MESSAGES, metadata=metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "x-ms-authentication" in details
    assert replies == []  # not even the descriptor reply
    assert SECRET not in caplog.text
    assert auth_server.server.backend is not None


async def _refused_codes(target: str, calls: int, send_first: bool) -> collections.Counter:
    """Open ``calls`` calls with a wrong password, as the stream client does: write, then read."""
    codes: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(
            METHOD_PATH,
            request_serializer=MediaStreamMessage.SerializeToString,
            response_deserializer=MediaStreamMessage.FromString,
        )
        for _ in range(calls):
            call = method(metadata=basic("lva", "wrong"))
            try:
                if send_first:
                    await call.write(MESSAGES[0])
                await asyncio.wait_for(call.read(), 10)
                codes["answered"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
    return codes


def test_refusal_status_survives_a_first_write_in_flight(auth_server):
    # Ending a refused call while the client's first write is still inside its grpc core
    # made grpc.aio report INTERNAL "Internal error from Core" (7 calls in 300 here, more
    # under emulation); the refusal now takes that message first.
    codes = asyncio.run(_refused_codes(auth_server.target, 200, send_first=True))
    assert codes == {"UNAUTHENTICATED": 200}


def test_refusal_does_not_wait_for_a_silent_client(auth_server):
    start = time.monotonic()
    codes = asyncio.run(_refused_codes(auth_server.target, 2, send_first=False))
    assert codes == {"UNAUTHENTICATED": 2}
    assert time.monotonic() - start < 2 * REJECT_WAIT_S + 5


def test_auth_off_accepts_dummy_credentials(server):
    replies, code, _ = exchange(server.target, MESSAGES, metadata=basic("dummy", "dummy"))
    assert code == grpc.StatusCode.OK and len(replies) == 2


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "test-ca")
    other = make_ca(d, "other-ca")
    server_cert, server_key = make_leaf(d, ca, "localhost", server=True)
    client_cert, client_key = make_leaf(d, ca, "lva-client", server=False)
    return {
        "ca": ca[2],
        "other_ca": other[2],
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def creds(pki, ca="ca", client=False) -> grpc.ChannelCredentials:
    key = pki["client_key"].read_bytes() if client else None
    cert = pki["client_cert"].read_bytes() if client else None
    return grpc.ssl_channel_credentials(pki[ca].read_bytes(), key, cert)


def test_tls_handshake_and_wrong_ca(make_server, pki):
    srv = make_server(tls_cert=str(pki["server_cert"]), tls_key=str(pki["server_key"]))
    target = f"localhost:{srv.port}"
    replies, code, _ = exchange(target, MESSAGES, credentials=creds(pki))
    assert code == grpc.StatusCode.OK and tags(replies[1]) == ["light"]
    _, code, _ = exchange(target, MESSAGES, credentials=creds(pki, "other_ca"), timeout=5)
    assert code == grpc.StatusCode.UNAVAILABLE
    _, code, _ = exchange(target, MESSAGES, timeout=5)  # plaintext to a TLS port
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(make_server, pki):
    srv = make_server(
        tls_cert=str(pki["server_cert"]),
        tls_key=str(pki["server_key"]),
        tls_client_ca=str(pki["ca"]),
    )
    target = f"localhost:{srv.port}"
    replies, code, _ = exchange(target, MESSAGES, credentials=creds(pki, client=True))
    assert code == grpc.StatusCode.OK and len(replies) == 2
    _, code, _ = exchange(target, MESSAGES, credentials=creds(pki), timeout=5)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_stream_command_over_tls_with_auth(make_server, pki):
    srv = make_server(
        tls_cert=str(pki["server_cert"]),
        tls_key=str(pki["server_key"]),
        tls_client_ca=str(pki["ca"]),
        auth_username="lva",
        auth_password=SECRET,
    )
    base = [
        sys.executable,
        "-m",
        "fastext",
        "stream",
        "synthetic:dark-light",
        "--target",
        f"localhost:{srv.port}",
        "--max-frames",
        "10",
        "--tls-ca",
        str(pki["ca"]),
        "--tls-cert",
        str(pki["client_cert"]),
        "--tls-key",
        str(pki["client_key"]),
    ]
    ok = subprocess.run(
        [*base, "--auth", f"lva:{SECRET}"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "acked 10" in ok.stdout
    refused = subprocess.run(
        [*base, "--auth", "lva:nope"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    wrong_ca = subprocess.run(
        [
            *base[:-6],
            "--tls-ca",
            str(pki["other_ca"]),
            "--ack-timeout",
            "5",
            "--auth",
            f"lva:{SECRET}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong_ca.returncode == 1 and "UNAVAILABLE" in wrong_ca.stderr
