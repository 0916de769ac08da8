"""Test certificates, made by `openssl` at test time (never checked in)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_self_signed_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (and 127.0.0.1) with its key, made by `openssl`; clients
    trust it with ``ssl.create_default_context(cafile=cert)``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    # fmt: off
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    # fmt: on
    return cert, key
