"""Is it a clip or a photo? Decided from the first bytes (`looks_like_video`), or for a file on disk also
from its suffix (`is_video_path`), before anything is decoded.

A clip is an ISO-BMFF file (MP4, MOV, M4V, 3GP) whose `ftyp` brand is not an image brand (HEIC, AVIF and
their sequences are photos, read by `app.imaging`), a Matroska/WebM file (EBML header), an AVI (RIFF
`AVI `) or an MPEG transport stream (0x47 sync bytes every 188).
"""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".3gp", ".3g2", ".mts",
                                     ".m2ts", ".ts")
"""Suffixes the CLI takes for a clip (case-insensitive), besides the content test."""

_IMAGE_BRANDS: frozenset[bytes] = frozenset({
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"avif", b"avis", b"mif1", b"msf1",
    b"mif2", b"miaf", b"jpeg", b"jpgs", b"crx "})
"""`ftyp` brands of still images (HEIF, AVIF, JPEG-in-HEIF, Canon raw) rather than clips."""
_EBML = b"\x1a\x45\xdf\xa3"
_TS_PACKET = 188

HEAD_BYTES = 4 * _TS_PACKET
"""How many leading bytes `looks_like_video` needs at most."""


def looks_like_video(head: bytes) -> bool:
    """Whether data starting with `head` (at least its first `HEAD_BYTES` if it has them) is a clip."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    if head.startswith(_EBML):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    packets = len(head) // _TS_PACKET
    return packets >= 2 and all(head[i * _TS_PACKET] == 0x47 for i in range(packets))


def is_video_path(path: Path) -> bool:
    """Whether the file at `path` is a clip: a video suffix, or video content."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    try:
        with path.open("rb") as file:
            return looks_like_video(file.read(HEAD_BYTES))
    except OSError:
        return False
