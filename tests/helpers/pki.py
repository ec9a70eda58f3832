"""A throwaway PKI for DICOM TLS tests: a CA, server and client certificates, made with openssl.

A second, unrelated CA signs a "rogue" client certificate that a verifying peer must refuse.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    """PEM files; ``server_*`` name 127.0.0.1 and localhost."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path  # signed by rogue_ca, not by ca
    rogue_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", f"/CN=osteoflag test {name}", cwd=folder)  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, cert, csr = folder / f"{name}.key", folder / f"{name}.pem", folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", "7",
             "-out", cert, "-days", "2", "-extfile", extensions, cwd=folder)  # fmt: skip
    return cert, key


def make_certificates(folder: Path) -> Certificates:
    """Create every file of :class:`Certificates` in ``folder``."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    server = _leaf(folder, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = _leaf(folder, "client", ca, "DNS:modality.example")
    rogue_ca = _ca(folder, "rogue-ca")
    rogue = _leaf(folder, "rogue", rogue_ca, "DNS:rogue.example")
    return Certificates(ca[0], *server, *client, rogue_ca[0], *rogue)
