"""s2auth 0.1.0 (the S2 Connect pairing protocol's Python implementation) as the peer of
tests/interop_s2auth.rs.

  s2auth_peer.py server DIR TOKEN NODE_ID
      Its reference pairing server (a CEM, LAN) on 127.0.0.1, a free port, over TLS with a
      CA and leaf made here in DIR (DIR/ca.pem is the CA). Prints `listening PORT` once
      the socket accepts. The pairing base is https://127.0.0.1:PORT/pairing/v1/.
  s2auth_peer.py client URL CODE
      Its reference client as a CEM pairing with URL (the gateway's pairing server).
      Prints `paired` or `failed: <reason>` and exits.

One shim, on the server only, and said so: s2auth 0.1.0 answers requestConnectionDetails
with `"certificateFingerprint": null`. The S2 Connect schema's certificateFingerprint is an
object, left out when absent, and s2-kit refuses null there; the shim leaves the null out
of that one response and changes nothing else.
"""
import asyncio
import datetime
import json
import os
import socket
import sys
from pathlib import Path


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """A CA and a leaf for 127.0.0.1/localhost; the chain file lists the leaf first (the
    server binds its HMAC to the first certificate of the file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s2auth peer CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = directory / "chain.pem"
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (directory / "ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    key = directory / "leaf.key"
    key.write_bytes(
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return chain, key


def server(directory: Path, token: str, node_id: str) -> None:
    chain, key = make_certificates(directory)
    os.chdir(directory)  # s2auth's settings also read ./.env: there is none here
    os.environ.update(
        {
            "PAIRING_NODE_ID": "s2authcem",
            # s2auth checks initiateSession's serverNodeId against the first and
            # advertises the second: one node, one id.
            "SERVER_S2_NODE_ID": node_id,
            "CEM_S2_NODE_ID": node_id,
            "CEM_TYPE": "CEM",
            "CEM_MODEL_NAME": "reference server",
            "CEM_BRAND": "s2auth",
            "CEM_DEPLOYMENT_TYPE": "LAN",
            "DEFAULT_PAIRING_TOKEN": token,
            "PAIRING_TOKEN_TTL_SECONDS": "600",
            "SUPPORTED_S2_VERSIONS": '["1.0.0"]',
            "SSL_CERTFILE": str(chain),
            "SSL_KEYFILE": str(key),
        }
    )
    import uvicorn
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import Response
    from s2auth.reference.server.main import app

    class LeaveOutNullFingerprint(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            response = await call_next(request)
            if not request.url.path.endswith("/requestConnectionDetails") or response.status_code != 200:
                return response
            body = json.loads(b"".join([chunk async for chunk in response.body_iterator]))
            if body.get("certificateFingerprint", {}) is None:
                del body["certificateFingerprint"]
            return Response(json.dumps(body), status_code=200, media_type="application/json")

    app.add_middleware(LeaveOutNullFingerprint)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue from here on, before uvicorn accepts them
    print(f"listening {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app, ssl_certfile=str(chain), ssl_keyfile=str(key), log_level="info"
    )
    uvicorn.Server(config).run(sockets=[sock])


class MemoryStorage:
    """The client's connection details in memory (its default is an SQLite file)."""

    def __init__(self) -> None:
        self.data: dict = {}

    def store_connection_details(self, node_id, details) -> None:
        self.data.setdefault(node_id, {}).update(details)

    def load_connection_details(self, node_id):
        return self.data.get(node_id)

    def remove_connection_details(self, node_id) -> bool:
        return self.data.pop(node_id, None) is not None


async def client(url: str, code: str) -> int:
    from s2auth.client import ClientSettings, PairingClient

    settings = ClientSettings(
        _env_file=None,
        server_url=url.rstrip("/"),
        pairing_token=code,
        client_role="CEM",
        client_deployment="LAN",
        # LAN: the certificate is self-signed; the HMAC decides (s2auth checks it).
        verify_tls=False,
        supported_s2_versions=["1.0.0"],
    )
    try:
        result = await PairingClient.from_settings(settings, storage=MemoryStorage()).pair()
    except Exception as error:  # noqa: BLE001 - the test reads the reason
        print(f"failed: {type(error).__name__}: {error}", flush=True)
        return 1
    print("paired" if result.success else "failed: finalizePairing was not answered 204", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(asyncio.run(client(sys.argv[2], sys.argv[3])))
