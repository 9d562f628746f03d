"""SHA-256 of checkpoint files, remembered in a `<file>.sha256` sidecar so only the first start hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

from app.files import write_atomically
from app.weights.errors import ChecksumMismatchError

logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 8 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def normalize_sha256(value: str) -> str:
    """Lower-case hex digest; accepts upper case and a `sha256:` prefix. Raises ValueError otherwise."""
    digest = value.strip().lower().removeprefix("sha256:")
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"SHARP_CHECKPOINT_SHA256 must be 64 hexadecimal digits, got {value!r}.")
    return digest


def file_sha256(path: Path, *, use_sidecar: bool = True) -> str:
    """SHA-256 (hex) of a file, read from / recorded in the sidecar `<path>.sha256` if `use_sidecar`.

    The sidecar holds the digest with the file's size (bytes) and mtime (ns); it is trusted only
    while both still match, so a replaced or modified file is hashed again. A sidecar that cannot
    be written (read-only directory) is skipped silently.
    """
    path = Path(path)
    st = path.stat()
    if use_sidecar:
        record = _read_sidecar(path)
        if record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns:
            digest = record.get("sha256")
            if isinstance(digest, str) and _SHA256_HEX.fullmatch(digest):
                return digest
    digest = hash_file(path)
    if use_sidecar:
        write_sidecar(path, digest)
    return digest


def verify_sha256(path: Path, sha256: str) -> None:
    """Raise `ChecksumMismatchError` unless the file's SHA-256 is `sha256` (uses the sidecar)."""
    expected = normalize_sha256(sha256)
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path} has SHA-256 {actual}, expected {expected} (SHARP_CHECKPOINT_SHA256). The file was "
            "not modified. Delete it to download a fresh copy, or correct SHARP_CHECKPOINT_SHA256."
        )


def hash_file(path: Path) -> str:
    started = time.monotonic()
    hasher = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    with path.open("rb") as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    elapsed = time.monotonic() - started
    if elapsed > 1.0:
        logger.info("Computed the SHA-256 of %s in %.1f s.", path.name, elapsed)
    return hasher.hexdigest()


def sidecar_path(path: Path) -> Path:
    """The recorded SHA-256 of `path`."""
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path, digest: str) -> None:
    """Record `digest` for the file as it is now (size and mtime); skipped where it cannot be written."""
    st = path.stat()
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        write_atomically(sidecar_path(path), [json.dumps(record).encode()])
    except OSError as exc:
        logger.debug("Could not record the SHA-256 of %s: %s", path, exc)


def _read_sidecar(path: Path) -> dict[str, object]:
    try:
        record = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
