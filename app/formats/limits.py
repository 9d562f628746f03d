"""What the scene readers accept before they allocate anything: a global cap on Gaussians, and the error for
files that claim more than they can hold or than we read (decompression bombs, absurd counts).

Every reader checks each count its file claims against the file's size (a binary PLY vertex takes its
properties' bytes, an ASCII one at least two characters a value, an .spz point 19 or 20 bytes before
compression) and against `MAX_GAUSSIANS` before it allocates for that count, and decompresses no more than the
count needs.
"""

from __future__ import annotations

import zlib

MAX_GAUSSIANS = 16_000_000
"""Most Gaussians a scene file may hold (a 16 M-Gaussian PLY is 900 MB)."""


class SceneTooLargeError(ValueError):
    """The file holds, or claims, more than the readers take: over `MAX_GAUSSIANS`, a decompression bomb, or a
    format that is only read up to a small size (ASCII PLY)."""


def check_gaussian_count(count: int, what: str, max_gaussians: int | None = None) -> None:
    """Raise `SceneTooLargeError` when `count` (claimed by `what`, e.g. "the .spz header") is over the cap."""
    limit = MAX_GAUSSIANS if max_gaussians is None else max_gaussians
    if count > limit:
        raise SceneTooLargeError(f"{what} claims {count:,} Gaussians (limit {limit:,})")


MAX_DEFLATE_RATIO = 3
"""A compressed scene may claim at most this many decompressed bytes per byte of file (plus 64 KiB). Real
.spz files deflate by 1.2-2x (quantised positions and colours are noisy); gzip of zeros reaches 1,000x. At 3,
a 10 MB .spz holds at most 1.5 M points (20 bytes each), which render in under 1 GB (docs/reliability.md);
at 8 it could claim 4 M, and 3 M of them took 1.33 GB."""


def check_deflate_ratio(claimed_bytes: int, file_bytes: int, what: str) -> None:
    """Raise `SceneTooLargeError` when `claimed_bytes` of decompressed data from a `file_bytes` file would be a
    decompression bomb (over `MAX_DEFLATE_RATIO`)."""
    if claimed_bytes > MAX_DEFLATE_RATIO * file_bytes + (1 << 16):
        raise SceneTooLargeError(f"{what} claims {claimed_bytes:,} bytes of data from a {file_bytes:,}-byte file, "
                                 f"more than {MAX_DEFLATE_RATIO}x: refused as a decompression bomb")


def gunzip_head(data: bytes | bytearray | memoryview, size: int) -> bytes:
    """At most the first `size` bytes that the gzip stream `data` decompresses to (fewer if it is shorter),
    from at most its first 64 KiB."""
    return zlib.decompressobj(wbits=31).decompress(memoryview(data).cast("B")[: 1 << 16], size)


def gunzip_exactly(data: bytes | bytearray | memoryview, size: int) -> bytes:
    """The first `size` bytes that the gzip stream `data` decompresses to, never more (members after the first
    are followed). The stream's CRC is checked when it ends right after them.

    Raises:
        ValueError: the stream holds fewer than `size` bytes, or more (its header said how much to expect).
        zlib.error: a corrupt stream.
    """
    remaining = memoryview(data).cast("B")
    parts: list[bytes] = []
    got = 0
    while got < size and remaining:
        member = zlib.decompressobj(wbits=31)
        parts.append(member.decompress(remaining, size - got))
        got += len(parts[-1])
        if got < size and not member.eof:
            break  # the input ended mid-stream
        remaining = memoryview(member.unconsumed_tail or member.unused_data)
        if got == size and not member.eof and member.decompress(remaining, 1):
            raise ValueError(f"the stream holds more than the {size:,} bytes its header announces")
    if got < size:
        raise ValueError(f"the stream is truncated: {got:,} bytes of the {size:,} its header announces")
    return b"".join(parts) if len(parts) > 1 else parts[0]
