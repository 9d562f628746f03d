"""The header of any PLY file, parsed and checked against the file's size before anything is allocated.

A PLY header lists elements (``element NAME COUNT``), each with scalar properties (``property TYPE NAME``)
and list properties (``property list COUNT_TYPE ITEM_TYPE NAME``), in ``ascii``, ``binary_little_endian``
or ``binary_big_endian`` format. Each element's rows take at least `PlyElement.min_row_bytes` bytes (binary:
the scalars' sizes plus each list's length field; ASCII: two characters, a digit and a separator, per value),
so a header that claims more rows than the bytes after it can hold is refused here, before a reader
allocates for the claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PLY_DTYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uint": "u4", "uint32": "u4",
              "int": "i4", "int32": "i4", "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1",
              "ushort": "u2", "uint16": "u2", "short": "i2", "int16": "i2"}
"""PLY type names -> numpy type codes (without byte order)."""
FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
MAX_HEADER_BYTES = 1 << 16
"""The header (``end_header`` included) must end within this many bytes."""
_END = b"end_header\n"
_COUNT = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class PlyProperty:
    """One property: `kind` is its numpy type code; `list_count` the type code of a list's length, else None."""

    name: str
    kind: str
    list_count: str | None = None


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty] = field(default_factory=list)

    @property
    def has_lists(self) -> bool:
        return any(p.list_count is not None for p in self.properties)

    def min_row_bytes(self, ascii_format: bool) -> int:
        """The fewest bytes one row can take (lists empty)."""
        if ascii_format:
            return 2 * len(self.properties)
        return sum(int((p.list_count or p.kind)[1:]) for p in self.properties)


@dataclass(frozen=True)
class PlyHeader:
    """`format` is a key of `FORMATS`; `size` the header's bytes (``end_header\\n`` included)."""

    format: str
    size: int
    elements: list[PlyElement]

    @property
    def byte_order(self) -> str:
        return FORMATS[self.format]

    def element(self, name: str) -> PlyElement | None:
        return next((e for e in self.elements if e.name == name), None)


def parse_ply_header(raw: bytes | bytearray | memoryview) -> PlyHeader:
    """Parse the header at the start of `raw` (the whole file) and check every element's count against the
    bytes after the header.

    Raises:
        ValueError: not a PLY, a malformed header line, a negative or non-decimal count, or more rows claimed
            than the file can hold.
    """
    raw = memoryview(raw).cast("B")
    head = bytes(raw[:MAX_HEADER_BYTES])
    end = head.find(_END)
    if not head.startswith(b"ply\n") or end < 0:
        raise ValueError("not a PLY file (no 'ply' magic line, or no 'end_header' in its first 64 KiB)")
    end += len(_END)
    fmt: str | None = None
    elements: list[PlyElement] = []
    for line in head[:end].decode("ascii", errors="replace").splitlines()[1:-1]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) == 3 and words[1] in FORMATS and fmt is None:
            if words[2] != "1.0":
                raise ValueError(f"unsupported PLY version {words[2]!r} (1.0 only)")
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            if not _COUNT.fullmatch(words[2]):
                raise ValueError(f"bad PLY element count {words[2]!r} in {line!r} (a decimal integer >= 0)")
            elements.append(PlyElement(words[1], int(words[2])))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in PLY_DTYPES:
            elements[-1].properties.append(PlyProperty(words[2], PLY_DTYPES[words[1]]))
        elif (words[0] == "property" and elements and len(words) == 5 and words[1] == "list"
              and words[2] in PLY_DTYPES and words[3] in PLY_DTYPES and PLY_DTYPES[words[2]][0] in "ui"):
            elements[-1].properties.append(PlyProperty(words[4], PLY_DTYPES[words[3]], PLY_DTYPES[words[2]]))
        else:
            raise ValueError(f"bad PLY header line {line[:80]!r}")
    if fmt is None:
        raise ValueError("the PLY header has no 'format' line")
    header = PlyHeader(fmt, end, elements)
    _check_counts(header, len(raw) - end)
    return header


def _check_counts(header: PlyHeader, body_bytes: int) -> None:
    needed = 0
    for element in header.elements:
        if element.count and not element.properties:
            raise ValueError(f"the PLY element {element.name!r} claims {element.count:,} rows but has no properties")
        needed += element.count * element.min_row_bytes(header.format == "ascii")
        if needed > body_bytes:
            raise ValueError(f"the PLY header claims {element.count:,} {element.name!r} rows, more than the "
                             f"{body_bytes:,} bytes after the header can hold: truncated or corrupt")
