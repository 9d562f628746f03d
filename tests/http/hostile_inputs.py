"""Hostile files for `test_hostile.py`, built from scratch: truncated images, header-only decompression
bombs, odd pixel modes, abused EXIF and polyglots. Each builder returns the bytes of one upload."""

from __future__ import annotations

import fractions
import io
import struct
import zipfile
import zlib

import av
import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

BOMB_SIDE = 60_000
"""Declared side of the header-only bombs: 3.6 gigapixels, under the 65,535 side limit of most formats."""


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=2).astype(np.uint8)
    return Image.fromarray(pixels)


def save(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def truncated(fmt: str, keep: float = 0.5) -> bytes:
    """A valid noisy image (it does not compress, so half the file is half the pixels) cut short."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    if fmt == "GIF":
        img = img.convert("P")
    data = save(img, fmt)
    return data[: int(len(data) * keep)]


# --------------------------------------------------------------------------------- decompression bombs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def png_zlib_bomb() -> bytes:
    """A real 2,000 x 2,500 PNG (5 Mpx, over the battery's 4 Mpx) of zeros: 15 MB of pixels in ~15 kB."""
    ihdr = struct.pack(">IIBBBBB", 2000, 2500, 8, 2, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * 6000) * 2500
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
            + _png_chunk(b"IEND", b""))


def gif_bomb() -> bytes:
    screen = struct.pack("<HHBBB", 65_535, 65_535, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 65_535, 65_535, 0)
    return b"GIF89a" + screen + frame + b"\x02\x02\x4c\x01\x00;"


def _tiff(entries: list[tuple[int, int, int]], payload: bytes = b"\x00" * 16) -> bytes:
    """A little-endian TIFF with one IFD of (tag, type, value) entries (types 3 SHORT, 4 LONG); tag 273
    (StripOffsets) is pointed at `payload`."""
    count = len(entries) + 1
    ifd_offset = 8
    payload_offset = ifd_offset + 2 + 12 * count + 4
    rows = sorted([*entries, (273, 4, payload_offset)])
    ifd = struct.pack("<H", count) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in rows
    ) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + payload


def tiff_bomb() -> bytes:
    return _tiff([(256, 4, BOMB_SIDE), (257, 4, BOMB_SIDE), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                  (277, 3, 1), (278, 4, BOMB_SIDE), (279, 4, 16)])


def bmp_bomb() -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, BOMB_SIDE, BOMB_SIDE, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + info + b"\x00" * 64


def jpeg_sof_bomb() -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to 60,000 x 60,000."""
    data = bytearray(save(gradient(), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", BOMB_SIDE, BOMB_SIDE)
    return bytes(data)


def webp_vp8x_bomb() -> bytes:
    """An extended (VP8X) WebP whose canvas claims 16,384 x 16,384, wrapping a real 64 x 48 lossless frame."""
    frame = save(gradient(), "WEBP", lossless=True)[12:]  # the VP8L chunk
    side = 16_384 - 1
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + side.to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8l_bomb() -> bytes:
    """A lossless WebP whose VP8L header is patched to 16,384 x 16,384 (its 14-bit maximum)."""
    data = bytearray(save(gradient(), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~0x0FFF_FFFF) | (16_383) | (16_383 << 14)
    data[21:25] = bits.to_bytes(4, "little")
    return bytes(data)


def psd_bomb() -> bytes:
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 30_000, 30_000, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x00" * 64


def ico_bomb() -> bytes:
    """An ICO whose one entry is a PNG that claims 60,000 x 60,000."""
    png = png_bomb()
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def tga_bomb() -> bytes:
    return struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, 65_535, 65_535, 24, 0) + b"\x00" * 64


def ppm_bomb() -> bytes:
    return f"P6\n{BOMB_SIDE} {BOMB_SIDE}\n255\n".encode() + b"\x00" * 64


def qoi_bomb() -> bytes:
    return b"qoif" + struct.pack(">IIBB", BOMB_SIDE, BOMB_SIDE, 3, 0) + b"\x00" * 64


def png_long_side() -> bytes:
    """70,000 x 1: few pixels, but a side longer than any photo."""
    return png_bomb(70_000, 1)


# ------------------------------------------------------------------------------------------ odd modes


def mode_image(kind: str) -> bytes:
    """A small image in an unusual pixel mode or shape, saved in a format that keeps that mode."""
    base = gradient()
    if kind == "1bit":
        return save(base.convert("1"), "PNG")
    if kind == "I;16":
        values = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
        return save(Image.fromarray(values), "PNG")
    if kind == "F":
        values = np.linspace(-5.0, 1e30, 48 * 64, dtype=np.float32).reshape(48, 64)
        values[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
        return save(Image.fromarray(values, mode="F"), "TIFF")
    if kind == "CMYK":
        return save(base.convert("CMYK"), "JPEG")
    if kind == "P+transparency":
        palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        return save(palette, "PNG", transparency=0)
    if kind == "LA":
        return save(base.convert("LA"), "PNG")
    if kind == "1x1":
        return save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    if kind == "1x20000":
        return save(gradient(1, 20_000), "PNG")
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------------ EXIF


def jpeg_with_exif(ifd0: dict[int, object] | None = None, exif_ifd: dict[int, object] | None = None,
                   fmt: str = "JPEG") -> bytes:
    img = gradient()
    exif = img.getexif()
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    if exif_ifd:
        sub = exif.get_ifd(0x8769)
        sub.update(exif_ifd)
    return save(img, fmt, exif=exif.tobytes())


FOCAL_LENGTH, FOCAL_35MM, ORIENTATION, MAKER_NOTE, USER_COMMENT = 0x920A, 0xA405, 0x0112, 0x927C, 0x9286


def exif_case(kind: str) -> bytes:
    if kind == "focal-huge":
        return jpeg_with_exif(exif_ifd={FOCAL_LENGTH: IFDRational(4_294_967_295, 1)})
    if kind == "focal-zero":
        return jpeg_with_exif(exif_ifd={FOCAL_LENGTH: IFDRational(0, 1), FOCAL_35MM: 0})
    if kind == "focal-nan":
        return jpeg_with_exif(exif_ifd={FOCAL_LENGTH: IFDRational(0, 0)})
    if kind == "focal-negative":
        return jpeg_with_exif(exif_ifd={FOCAL_LENGTH: IFDRational(-35, 1)})
    if kind == "orientation-bogus":
        return jpeg_with_exif(ifd0={ORIENTATION: 65_535})
    if kind == "exif-enormous":
        # 900 kB of EXIF in a PNG eXIf chunk (a JPEG APP1 segment cannot hold more than 64 kB).
        return jpeg_with_exif(exif_ifd={MAKER_NOTE: b"\xaa" * 450_000, USER_COMMENT: b"\x00" * 450_000},
                              fmt="PNG")
    raise ValueError(kind)


# ------------------------------------------------------------------------------------ polyglots and junk


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("evil.txt", "not an image")
    return buffer.getvalue()


HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n" \
      b"trailer<</Root 1 0 R>>\n%%EOF\n"
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000">' \
      b'<rect width="100%" height="100%"/><script>alert(1)</script></svg>'
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def gifar() -> bytes:
    """A valid GIF with a ZIP archive appended (the classic GIF/JAR polyglot): an image, so it is served."""
    return save(gradient().convert("P"), "GIF") + zip_archive()


def random_bytes(n: int = 4096, seed: int = 7) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()
    return b"\x00" + data  # no format's magic starts with NUL followed by random bytes


def jpeg_magic_then_garbage() -> bytes:
    return b"\xff\xd8\xff\xe0" + random_bytes(2048)[1:]


# ------------------------------------------------------------------------------- scene files (renderer)

SPZ_HEADER = struct.Struct("<IIIBBBB")
SPZ_MAGIC = 0x5053474E
PLY_VERTEX_PROPERTIES = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                         "rot_0", "rot_1", "rot_2", "rot_3")


def gzip_of_zeros(prefix: bytes, zero_bytes: int) -> bytes:
    """One valid gzip member (right CRC and size) of `prefix` then `zero_bytes` zeros, about 1/1000 of the size.

    The zeros are deflated once per MiB and the (byte-aligned, history-free) block is repeated, so building a
    gigabyte bomb takes a second, not the minute that compressing a gigabyte would."""
    mib = 1 << 20
    whole, rest = divmod(zero_bytes, mib)

    def full_flush(data: bytes) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)

    last = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [full_flush(prefix), full_flush(b"\x00" * mib) * whole, last.compress(b"\x00" * rest) + last.flush()]
    crc = zlib.crc32(prefix)
    block = b"\x00" * mib
    for _ in range(whole):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(b"\x00" * rest, crc)
    size = (len(prefix) + zero_bytes) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + b"".join(body) + struct.pack("<II", crc, size)


def spz_bomb(num_points: int, zero_bytes: int, version: int = 3) -> bytes:
    """A valid .spz header claiming `num_points`, then `zero_bytes` zeros, gzipped (a gzip bomb)."""
    return gzip_of_zeros(SPZ_HEADER.pack(SPZ_MAGIC, version, num_points, 0, 12, 0, 0), zero_bytes)


def ply_header(count: str | int, *, fmt: str = "binary_little_endian", extra: tuple[str, ...] = (),
               after: tuple[str, ...] = ()) -> bytes:
    """A 3DGS PLY header whose vertex element claims `count` rows; `extra` property lines are added to the
    vertex element, `after` lines (further elements) follow it."""
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {count}"]
    lines += [f"property float {name}" for name in PLY_VERTEX_PROPERTIES] + list(extra) + list(after)
    return ("\n".join([*lines, "end_header"]) + "\n").encode("ascii")


def ply_vertices(n: int) -> bytes:
    """`n` binary little-endian vertices: visible, small, in front of the camera."""
    rows = np.zeros((n, len(PLY_VERTEX_PROPERTIES)), dtype="<f4")
    rows[:, 2] = 2.0 + np.arange(n, dtype=np.float32) / max(n, 1)
    rows[:, 6] = 3.0
    rows[:, 7:10] = -3.0
    rows[:, 10] = 1.0
    return rows.tobytes()


def ply_list_bomb(count: int = 60_000_000) -> bytes:
    """A few hundred bytes claiming `count` vertices, each with a list property (what plyfile reads row by row)."""
    return ply_header(count, extra=("property list uchar int neighbours",)) + ply_vertices(2) + b"\x00" * 2


def ply_ascii_bomb(count: int = 2_000_000_000) -> bytes:
    return ply_header(count, fmt="ascii") + b"0 0 2 0 0 0 3 -3 -3 -3 1 0 0 0\n"


def ply_face_bomb(faces: int = 4_000_000_000) -> bytes:
    """Ten real vertices, then a `face` element that claims `faces` rows of a list property."""
    return ply_header(10, after=(f"element face {faces}", "property list uchar int vertex_indices")) + \
        ply_vertices(10) + b"\x03" + b"\x00" * 12


def ply_binary_count_bomb(count: int = 2_000_000_000) -> bytes:
    """A binary PLY claiming `count` vertices with the bytes of two."""
    return ply_header(count) + ply_vertices(2)


def ply_ascii_large(megabytes: float = 9.0) -> bytes:
    """A well-formed ASCII PLY of about `megabytes` MB (over the size that is read through plyfile)."""
    line = b"0.125 -0.25 2.5 0.1 0.2 0.3 2.25 -3.5 -3.5 -3.5 1 0 0 0\n"
    count = int(megabytes * 1e6) // len(line)
    return ply_header(count, fmt="ascii") + line * count


def ply_huge_values() -> bytes:
    """Four vertices whose log scales (80) and opacity logits (-1e30) are finite in the file but overflow when
    read (exp(80) as a standard deviation, squared, is infinite in float32)."""
    rows = np.frombuffer(ply_vertices(4), dtype="<f4").reshape(4, -1).copy()
    rows[:, 7:10] = 80.0
    rows[:, 6] = -1e30
    return ply_header(4) + rows.tobytes()


def spz_truncated(num_points: int = 1000) -> bytes:
    """A .spz of `num_points` points of noise (it does not compress), cut in half."""
    payload = np.random.default_rng(5).integers(0, 256, size=20 * num_points, dtype=np.uint8).tobytes()
    whole = zlib.compress(SPZ_HEADER.pack(SPZ_MAGIC, 3, num_points, 0, 12, 0, 0) + payload, wbits=31)
    return whole[: len(whole) // 2]


def ply_binary_overlapping(megabytes: float = 9.0) -> bytes:
    """A valid binary PLY of about `megabytes` MB whose Gaussians all sit at one spot, each about 80 px wide in a
    1024 x 768 view: ~160,000 of them need ~60 M (tile, Gaussian) pairs in one frame."""
    count = int(megabytes * 1e6) // 56
    rows = np.frombuffer(ply_vertices(1), dtype="<f4").reshape(1, -1).copy()
    rows[0, :3] = (0.125, -0.25, 2.5)
    rows[0, 6] = 2.25
    rows[0, 7:10] = -3.5
    return ply_header(count) + np.repeat(rows, count, axis=0).tobytes()


# ------------------------------------------------------------------------------------------- .sog bundles


def _webp(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def sog_meta(count: int | str) -> str:
    """A meta.json claiming `count` Gaussians (written as is: `"1e999"` overflows)."""
    codebook = ", ".join(["0.0"] * 256)
    return (f'{{"version": 2, "count": {count}, "means": {{"mins": [0, 0, 0], "maxs": [1, 1, 1], '
            f'"files": ["means_l.webp", "means_u.webp"]}}, "scales": {{"codebook": [{codebook}], '
            f'"files": ["scales.webp"]}}, "quats": {{"files": ["quats.webp"]}}, '
            f'"sh0": {{"codebook": [{codebook}], "files": ["sh0.webp"]}}}}')


def sog_bundle(count: int | str, *, image_size: tuple[int, int] = (4, 4), extra: dict[str, bytes] | None = None,
               compression: int = zipfile.ZIP_STORED, meta: str | bytes | None = None) -> bytes:
    """A .sog zip whose meta.json (`meta`, else `sog_meta(count)`) claims `count` Gaussians, with five blank
    lossless WebP images of `image_size` and the `extra` members (which replace those of the same name)."""
    image = _webp(*image_size)
    files = {name: image for name in ("means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp")}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as bundle:
        bundle.writestr("meta.json", sog_meta(count) if meta is None else meta)
        for name, data in {**files, **(extra or {})}.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def sog_flagged(flag_bits: int = 0, method: int | None = None) -> bytes:
    """A valid small .sog whose members are all marked with general-purpose `flag_bits` (1: encrypted) and, if
    given, compression `method` (99: AES, which zipfile does not read), in both zip headers."""
    data = bytearray(sog_bundle(16))
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(signature)
        while at >= 0:
            flags = int.from_bytes(data[at + flags_at : at + flags_at + 2], "little") | flag_bits
            data[at + flags_at : at + flags_at + 2] = flags.to_bytes(2, "little")
            if method is not None:
                data[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = data.find(signature, at + 4)
    return bytes(data)


def sog_zip_bomb(zero_bytes: int = 64 << 20) -> bytes:
    """A valid small .sog plus a deflated member of `zero_bytes` zeros (a zip bomb)."""
    return sog_bundle(16, extra={"padding.bin": b"\x00" * zero_bytes}, compression=zipfile.ZIP_DEFLATED)


# ------------------------------------------------------------------------------------------- clips


def solid_jpeg(width: int, height: int) -> bytes:
    """A real baseline grayscale JPEG of `width` x `height` grey pixels, built without them: every 8x8 block is
    'DC difference 0, end of block' (6 bits in the standard tables), so 16,000 x 16,000 is a 3 MB file."""
    data = bytearray(save(Image.new("L", (8, 8), 128), "JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    sos = data.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    blocks = -(-width // 8) * -(-height // 8)
    whole, rest = divmod(blocks, 4)
    bits = "001010" * rest
    bits += "1" * (-len(bits) % 8)  # padding with ones, as JPEG wants
    tail = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return bytes(data[:scan_start]) + b"\x28\xa2\x8a" * whole + tail + b"\xff\xd9"


def mjpeg_clip(sizes: list[tuple[int, int]], fps: int = 10) -> bytes:
    """An AVI of MJPEG frames of the given (width, height) each (`solid_jpeg`); its header says the first's
    size, but an MJPEG frame carries its own."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as output:
        stream = output.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *sizes[0], "yuvj420p"
        for index, (width, height) in enumerate(sizes):
            packet = av.Packet(solid_jpeg(width, height))
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base, packet.is_keyframe = fractions.Fraction(1, fps), True
            output.mux(packet)
    return buffer.getvalue()


def clip_unknown_codec() -> bytes:
    """An MJPEG AVI whose codec tag is changed to one FFmpeg has no decoder for."""
    return mjpeg_clip([(16, 16)] * 3).replace(b"MJPG", b"ZQXW")


def clip_without_duration(clip: bytes) -> bytes:
    """A Matroska clip (from `tests.helpers.make_clip(container="matroska")`) whose Duration element is made
    a Void one: FFmpeg then knows no duration."""
    data = bytearray(clip)
    at = data.index(b"\x44\x89")  # Duration, in Info
    size = data[at + 2] & 0x7F
    data[at : at + 2] = b"\xec" + bytes([0x80 | (size + 1)])  # Void, one byte longer to cover the ID's second
    return bytes(data)


# ------------------------------------------------------------------------------------- renderer work


def splat_one_tile_row(count: int = 262_144) -> bytes:
    """A .splat of `count` faint Gaussians on the middle row of the default 1024 x 768 view (z = 2 m), each
    1 px high and as wide as the picture: every pair lies in one 4-px row of tiles (`count` x 256 pairs)."""
    records = np.zeros(count, dtype=[("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)),
                                     ("rotation", "u1", (4,))])
    records["position"] = (0.0, 0.0, 2.0)
    records["position"][:, 2] += np.arange(count, dtype=np.float32) * 1e-6
    records["scale"] = (10.0, 1e-4, 1e-4)
    records["rgba"] = (200, 100, 50, 3)
    records["rotation"] = (255, 128, 128, 128)
    return records.tobytes()
