"""Drives the real `hotload-sidecar` (HOTLOAD_SIDECAR_BIN): an HTTPS artifact server with a
CA made here, the sidecar process, its `load` command and its admin endpoint."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

SIDECAR_BIN = os.environ.get("HOTLOAD_SIDECAR_BIN", "")

needs_sidecar = pytest.mark.skipif(
    not SIDECAR_BIN or not os.access(SIDECAR_BIN, os.X_OK),
    reason="set HOTLOAD_SIDECAR_BIN to a built hotload-sidecar to run the real-sidecar tests "
    "(make sdk-python does)",
)


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1/localhost; returns (ca.pem, leaf.pem, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hotload test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, leaf_path, key_path = (
        directory / "ca.pem",
        directory / "leaf.pem",
        directory / "leaf.key",
    )
    ca_path.write_bytes(ca.public_bytes(pem))
    leaf_path.write_bytes(leaf.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, leaf_path, key_path


class ArtifactServer:
    """HTTPS server of named blobs; counts the downloads of each."""

    def __init__(self, leaf: Path, key: Path):
        self.blobs: dict[str, bytes] = {}
        self.downloads: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                blob = server.blobs.get(name)
                if blob is None:
                    self.send_error(404)
                    return
                server.downloads[name] = server.downloads.get(name, 0) + 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def put(self, name: str, blob: bytes) -> str:
        """Serves blob under name; returns its URL."""
        self.blobs[name] = blob
        return f"https://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Sidecar:
    """A running `hotload-sidecar run` on a state directory."""

    def __init__(self, state: Path, ca: Path):
        self.state, self.ca = state, ca
        self._start()

    def _start(self) -> None:
        state, ca = self.state, self.ca
        self.proc = subprocess.Popen(
            [
                SIDECAR_BIN,
                "run",
                "--state-dir",
                str(state),
                "--admin-addr",
                "127.0.0.1:0",
                "--ca-bundle",
                str(ca),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
            text=True,
        )
        line = self.proc.stdout.readline()
        words = dict(w.split("=", 1) for w in line.split() if "=" in w)
        assert "admin" in words, f"sidecar printed {line!r}"
        self.admin = words["admin"]
        self.app_socket = words.get("app-socket", str(state / "app.sock"))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def status(self) -> str:
        return self.get("/status")[1]

    def workers(self) -> list[str]:
        """Names of the connected workers, from /status."""
        try:
            app = json.loads(self.status()).get("app", {})
        except ValueError:
            return []
        return sorted(w.get("name", "") for w in app.get("workers", {}).values())

    def wait_status(self, text: str, timeout: float = 30.0) -> str:
        """Waits until /status contains text; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status()
            if text in body:
                return body
            assert time.monotonic() < deadline, f"/status never showed {text!r}: {body}"
            time.sleep(0.05)

    def load(
        self, plugin: str, url: str, digest: str, revision: str, timeout: float = 60.0
    ) -> tuple[bool, dict]:
        """`hotload-sidecar load`: (exit 0, printed outcome)."""
        out = subprocess.run(
            [
                SIDECAR_BIN,
                "load",
                "--state-dir",
                str(self.state),
                "--plugin",
                plugin,
                "--artifact",
                url,
                "--digest",
                digest,
                "--revision",
                revision,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return out.returncode == 0, json.loads(out.stdout.strip() or "{}")

    def stop(self) -> None:
        """Kills the sidecar (a crash, as far as the app can tell)."""
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self) -> None:
        """Crash and start again on the same state directory."""
        self.stop()
        self._start()
