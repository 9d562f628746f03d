"""A clip's scenes as one ``.sogv`` file ("SOG video"): SHARP's per-pixel Gaussians as video streams.

SHARP puts its Gaussians on the input's pixel grid, ``layers x side x side`` of them (2 x 768 x 768 at full
size), layer by layer and row by row. So each attribute of a frame's Gaussians is an image aligned with the
video frame, and from frame to frame it changes the way the frames do: what video codecs compress. Each
Gaussian's 13 numbers are mapped to 13 channels that vary smoothly over the grid, quantised to `BITS` bits
and encoded as five 4:4:4 video streams of ``side`` x ``layers * side`` pixels (the layers stacked):

=============  =====================================================================================
stream         channels (Y, U, V)
=============  =====================================================================================
``position``   ln z; du, dv: where the centre projects at the input camera, in grid cells from its
               cell's centre (u = f x / z + W / 2, du = u / (W / side) - (column + 0.5); v likewise)
``scale``      ln(s_k / z), k = 0, 1, 2 (the angular sizes: the depth's gradient leaves them)
``rotation``   x, y, z of the unit quaternion (w, x, y, z) made w >= 0; w = sqrt(1 - x² - y² - z²)
``color``      sRGB of the linear colour (r, g, b)
``opacity``    the opacity; U and V constant (mid-grey)
=============  =====================================================================================

Each channel c of frame k is quantised on its range [lo, hi] (``frames[k].ranges`` in the manifest) as
``q = round((2^BITS - 1) * (value - lo) / (hi - lo))``, clamped. A range is kept from frame to frame while
the values stay inside it (so the codec sees the same mapping) and widened by `RANGE_MARGIN` of its span
when they do not. The file layout, byte by byte, is in docs/formats.md ("Sequence"); `SequenceWriter` writes
one frame at a time (memory holds the encoded packets, not the frames), `SequenceReader` decodes any frame
(from the key frame before it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from app.formats.limits import MAX_GAUSSIANS, check_gaussian_count
from app.gaussians import GaussianScene, linear_to_srgb, srgb_to_linear

MAGIC = b"SOGVIDEO"
VERSION = 1
HEADER = struct.Struct("<8sII")
"""magic, version, manifest length in bytes (little-endian); the manifest (UTF-8 JSON) follows, then the
packets, at the offsets the manifest gives from the end of the manifest."""
SUFFIX = ".sogv"
MEDIA_TYPE = "application/vnd.sharp.sogv"
STREAMS = ("position", "scale", "rotation", "color", "opacity")
BITS = 10
LEVELS = (1 << BITS) - 1
RANGE_MARGIN = 0.05
LAYERS = 2
"""SHARP's layers per grid cell."""
MAX_MANIFEST_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Codec:
    """An encoder and its settings: `name` (FFmpeg's encoder), `pix_fmt`, `options` per stream."""

    name: str
    pix_fmt: str
    options: dict[str, dict[str, str]]
    gop: int


CRF = {"position": 16, "scale": 30, "rotation": 28, "color": 18, "opacity": 20}
"""libx264's constant rate factor per stream (lower: more bytes, less error), chosen by measurement on clips of
the tiny and tiny_full presets (docs/formats.md): the positions' depth and the rotations cost the most error."""
GOP = 30
"""Frames from one key frame to the next: `SequenceReader.frame` decodes at most this many."""


def x264(crf: dict[str, int] | None = None, *, offset: int = 0, preset: str = "veryfast", gop: int = GOP) -> Codec:
    """libx264, High 4:4:4 Predictive at 10 bits: `crf` per stream (default `CRF`), each plus `offset` (the
    rate knob: +6 about halves the bytes), clamped to 0-51."""
    crf = crf or CRF
    return Codec("libx264", "yuv444p10le",
                 {name: {"crf": str(min(51, max(0, crf[name] + offset))), "preset": preset} for name in STREAMS}, gop)


DEFAULT_CODEC = x264()


class SequenceError(ValueError):
    """A ``.sogv`` file that cannot be read, or a frame it does not hold."""


def grid_side(count: int) -> int:
    """The side of the grid of `count` = LAYERS * side² Gaussians (ValueError otherwise)."""
    side = math.isqrt(count // LAYERS)
    if side < 2 or LAYERS * side * side != count:
        raise ValueError(f"{count:,} Gaussians are not SHARP's grid of {LAYERS} x side x side (a clip's sequence "
                         f"needs every predicted Gaussian, in the predicted order: no max_gaussians)")
    return side


def _channels(scene: GaussianScene, side: int) -> dict[str, np.ndarray]:
    """The 13 channels of `scene` as (3, LAYERS * side, side) float64 per stream (module docstring)."""
    positions = np.asarray(scene.positions, dtype=np.float64)
    x, y, z = positions.T
    if not (np.isfinite(positions).all() and (z > 0).all()):
        raise ValueError("a sequence frame needs finite positions in front of the camera (z > 0)")
    index = np.arange(scene.num_gaussians)
    row, column = (index // side) % side, index % side
    du = (scene.f_px * x / z + scene.image_width / 2) / (scene.image_width / side) - (column + 0.5)
    dv = (scene.f_px * y / z + scene.image_height / 2) / (scene.image_height / side) - (row + 0.5)
    log_z = np.log(z)
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.asarray(scene.scales, dtype=np.float64)) - log_z[:, None]
    rotations = np.asarray(scene.rotations, dtype=np.float64)
    rotations = rotations / np.linalg.norm(rotations, axis=1, keepdims=True)
    rotations = np.where(rotations[:, :1] < 0, -rotations, rotations)
    srgb = linear_to_srgb(scene.colors).astype(np.float64)
    opacity = np.asarray(scene.opacities, dtype=np.float64)
    half = np.full_like(opacity, 0.5)
    columns = {"position": (log_z, du, dv), "scale": tuple(log_scales.T), "rotation": tuple(rotations[:, 1:].T),
               "color": tuple(srgb.T), "opacity": (opacity, half, half)}
    shape = (3, LAYERS * side, side)
    out = {}
    for name, values in columns.items():
        stacked = np.stack(values)
        if not np.isfinite(stacked).all():
            raise ValueError(f"a sequence frame's {name} is not finite")
        out[name] = stacked.reshape(shape)
    return out


def _scene(planes: dict[str, np.ndarray], f_px: float, width: int, height: int) -> GaussianScene:
    """`_channels` inverted: (3, LAYERS * side, side) float64 per stream -> the scene."""
    side = planes["position"].shape[2]
    log_z, du, dv = (channel.reshape(-1) for channel in planes["position"])
    count = log_z.size
    index = np.arange(count)
    row, column = (index // side) % side, index % side
    z = np.exp(log_z)
    u = (column + 0.5 + du) * (width / side)
    v = (row + 0.5 + dv) * (height / side)
    positions = np.stack([(u - width / 2) * z / f_px, (v - height / 2) * z / f_px, z], axis=1)
    scales = np.exp(planes["scale"].reshape(3, -1).T + log_z[:, None])
    xyz = planes["rotation"].reshape(3, -1).T
    w = np.sqrt(np.maximum(0.0, 1.0 - np.square(xyz).sum(axis=1)))
    rotations = np.concatenate([w[:, None], xyz], axis=1)
    rotations /= np.linalg.norm(rotations, axis=1, keepdims=True)
    return GaussianScene(
        positions=positions.astype(np.float32), scales=scales.astype(np.float32),
        rotations=rotations.astype(np.float32),
        colors=srgb_to_linear(planes["color"].reshape(3, -1).T.astype(np.float32)),
        opacities=np.clip(planes["opacity"][0].reshape(-1), 0.0, 1.0).astype(np.float32),
        f_px=float(f_px), image_width=int(width), image_height=int(height))


class SequenceWriter:
    """``add(scene)`` for each frame in order, then ``finish()``: the ``.sogv`` bytes.

    Args:
        fps: the clip's frame rate (frames per second), written to the manifest.
        codec: the encoder and its settings (`DEFAULT_CODEC`).
        extra: more manifest fields (the clip's source, the model), JSON-ready.
    """

    def __init__(self, fps: float, codec: Codec = DEFAULT_CODEC, extra: dict[str, Any] | None = None) -> None:
        self.fps, self.codec, self.extra = float(fps), codec, dict(extra or {})
        self._encoders: dict[str, av.video.codeccontext.VideoCodecContext] = {}
        self._packets: dict[str, list[tuple[bytes, bool]]] = {name: [] for name in STREAMS}
        self._ranges: dict[str, np.ndarray] = {}
        self._frames: list[dict[str, Any]] = []
        self._camera: tuple[float, int, int] | None = None
        self._side = 0

    def _open(self, side: int) -> None:
        self._side = side
        rate = max(1, round(self.fps))
        for name in STREAMS:
            context = av.CodecContext.create(self.codec.name, "w")
            context.width, context.height, context.pix_fmt = side, LAYERS * side, self.codec.pix_fmt
            context.time_base = Fraction(1, rate)
            context.framerate = Fraction(rate, 1)
            context.gop_size = self.codec.gop
            context.options = dict(self.codec.options[name])
            if self.codec.name == "libx264":  # Annex B with the parameter sets before every key frame
                context.options["x264-params"] = "repeat-headers=1:bframes=0"
            context.open()
            self._encoders[name] = context

    def _range(self, name: str, values: np.ndarray) -> np.ndarray:
        """(3, 2) [lo, hi] per channel for this frame: the last frame's, widened where `values` leave it."""
        low, high = values.reshape(3, -1).min(axis=1), values.reshape(3, -1).max(axis=1)
        current = self._ranges.get(name)
        if current is not None and (current[:, 0] <= low).all() and (high <= current[:, 1]).all():
            return current
        span = np.maximum(high - low, 1e-6)
        updated = np.stack([low - RANGE_MARGIN * span, high + RANGE_MARGIN * span], axis=1)
        if current is not None:
            updated = np.stack([np.minimum(updated[:, 0], current[:, 0]), np.maximum(updated[:, 1], current[:, 1])],
                               axis=1)
        self._ranges[name] = updated
        return updated

    def add(self, scene: GaussianScene) -> None:
        """Encode the next frame (ValueError: not SHARP's grid, another grid or camera than frame 0's, or
        values that are not finite)."""
        side = grid_side(scene.num_gaussians)
        camera = (float(scene.f_px), int(scene.image_width), int(scene.image_height))
        if self._camera is None:
            self._camera = camera
            self._open(side)
        elif side != self._side or camera != self._camera:
            raise ValueError(f"sequence frame {len(self._frames)}: grid {side} and camera {camera} differ from "
                             f"frame 0's ({self._side}, {self._camera})")
        index = len(self._frames)
        ranges = {}
        for name, values in _channels(scene, side).items():
            bounds = self._range(name, values)
            ranges[name] = bounds.tolist()
            low, span = bounds[:, :1, None], (bounds[:, 1] - bounds[:, 0])[:, None, None]
            codes = np.clip(np.rint((values - low) / span * LEVELS), 0, LEVELS).astype(np.uint16)
            frame = av.VideoFrame(side, LAYERS * side, self.codec.pix_fmt)
            for plane, channel in zip(frame.planes, codes, strict=True):
                _fill(plane, channel)
            frame.pts = index
            for packet in self._encoders[name].encode(frame):
                self._packets[name].append((bytes(packet), bool(packet.is_keyframe)))
        self._frames.append({"ranges": ranges})

    def finish(self) -> bytes:
        """The whole file (ValueError if no frame was added)."""
        if self._camera is None:
            raise ValueError("a sequence needs at least one frame")
        for name in STREAMS:
            for packet in self._encoders[name].encode(None):
                self._packets[name].append((bytes(packet), bool(packet.is_keyframe)))
        payload = bytearray()
        streams: dict[str, Any] = {}
        for name in STREAMS:
            packets = self._packets[name]
            if len(packets) != len(self._frames):
                raise RuntimeError(f"{name}: {len(packets)} packets for {len(self._frames)} frames")
            entries = []
            for body, key in packets:
                entries.append([len(payload), len(body), int(key)])
                payload += body
            streams[name] = {"packets": entries, "options": self.codec.options[name]}
        f_px, width, height = self._camera
        manifest = {
            "format": "sogv", "version": VERSION, "num_frames": len(self._frames), "fps": self.fps,
            "f_px": f_px, "image_width": width, "image_height": height,
            "grid": {"layers": LAYERS, "side": self._side},
            "codec": {"name": "h264" if self.codec.name == "libx264" else self.codec.name,
                      "encoder": self.codec.name, "pix_fmt": self.codec.pix_fmt, "bits": BITS,
                      "packing": "annexb", "gop": self.codec.gop},
            "streams": streams, "frames": self._frames, **self.extra,
        }
        body = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
        return HEADER.pack(MAGIC, VERSION, len(body)) + body + bytes(payload)


def _fill(plane: Any, channel: np.ndarray) -> None:
    """Copy (rows, cols) uint16 samples into a frame plane, row by row (the plane's rows may be padded)."""
    rows, cols = channel.shape
    stride = plane.line_size // 2
    if stride == cols:
        plane.update(np.ascontiguousarray(channel).tobytes())
        return
    padded = np.zeros((rows, stride), dtype=np.uint16)
    padded[:, :cols] = channel
    plane.update(padded.tobytes())


def _samples(plane: Any, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) uint16 samples of a decoded frame plane."""
    data = np.frombuffer(plane, dtype=np.uint16).reshape(rows, plane.line_size // 2)
    return data[:, :cols]


class SequenceReader:
    """A ``.sogv`` file opened: `manifest`, `num_frames`, and `frame(k)`, the scene of frame k.

    Raises (at opening): `SequenceError` for anything that is not a ``.sogv`` this reader can read: the magic,
    the version, a manifest that is not JSON or lacks a field, packets past the end of the file.
    """

    def __init__(self, data: bytes | bytearray | memoryview, *, max_gaussians: int = MAX_GAUSSIANS) -> None:
        data = bytes(data)
        if len(data) < HEADER.size:
            raise SequenceError(f"not a .sogv file: {len(data)} bytes, shorter than its {HEADER.size}-byte header")
        magic, version, length = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise SequenceError("not a .sogv file (its first 8 bytes are not 'SOGVIDEO')")
        if version != VERSION:
            raise SequenceError(f".sogv version {version} is not supported (only {VERSION})")
        if length > MAX_MANIFEST_BYTES or HEADER.size + length > len(data):
            raise SequenceError(f"truncated .sogv file: its manifest claims {length:,} bytes, the file has "
                                f"{len(data) - HEADER.size:,} after the header")
        try:
            manifest = json.loads(data[HEADER.size:HEADER.size + length])
            self.num_frames = int(manifest["num_frames"])
            self.side = int(manifest["grid"]["side"])
            self.f_px = float(manifest["f_px"])
            self.width, self.height = int(manifest["image_width"]), int(manifest["image_height"])
            self._packets = {name: [(int(o), int(n), bool(k)) for o, n, k in manifest["streams"][name]["packets"]]
                             for name in STREAMS}
            self._ranges = [{name: np.asarray(frame["ranges"][name], dtype=np.float64).reshape(3, 2)
                             for name in STREAMS} for frame in manifest["frames"]]
            codec = manifest["codec"]["name"]
            layers = int(manifest["grid"]["layers"])
            pix_fmt = manifest["codec"].get("pix_fmt")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise SequenceError(f"bad .sogv manifest: {error!r}") from None
        if layers != LAYERS or self.side < 2 or len(self._ranges) != self.num_frames:
            raise SequenceError("bad .sogv manifest: the grid or the frame count do not add up")
        check_gaussian_count(LAYERS * self.side * self.side, "the .sogv manifest", max_gaussians)
        if codec != "h264" or pix_fmt != "yuv444p10le":
            raise SequenceError(f".sogv codec {codec!r} is not supported (only h264, yuv444p10le)")
        payload = memoryview(data)[HEADER.size + length:]
        for name, packets in self._packets.items():
            if len(packets) != self.num_frames or not packets or not packets[0][2]:
                raise SequenceError(f"bad .sogv manifest: stream {name} has not one packet per frame from a key frame")
            end = max(offset + size for offset, size, _ in packets)
            if min(min(offset, size) for offset, size, _ in packets) < 0 or end > len(payload):
                raise SequenceError(f"truncated .sogv file: stream {name}'s packets end at byte {end:,} of a "
                                    f"{len(payload):,}-byte payload")
        self.manifest, self._payload, self._codec = manifest, payload, codec

    def frame(self, index: int) -> GaussianScene:
        """The scene of frame `index` (0-based): decoded from the key frame at or before it."""
        if not 0 <= index < self.num_frames:
            raise SequenceError(f"frame {index} is not in this sequence (it has frames 0 to {self.num_frames - 1})")
        planes = {}
        for name in STREAMS:
            packets = self._packets[name]
            start = max(k for k in range(index + 1) if packets[k][2])
            codes = None
            for k, decoded in enumerate(self._decode(packets[start:])):
                if start + k == index:
                    codes = decoded
                    break
            if codes is None:
                raise SequenceError(f"stream {name} does not decode frame {index}")
            bounds = self._ranges[index][name]
            planes[name] = bounds[:, :1, None] + codes / LEVELS * (bounds[:, 1] - bounds[:, 0])[:, None, None]
        return _scene(planes, self.f_px, self.width, self.height)

    def _decode(self, packets: list[tuple[int, int, bool]]) -> Iterator[np.ndarray]:
        """(3, rows, cols) float64 codes of each frame the packets decode to, in order."""
        context = av.CodecContext.create(self._codec, "r")
        rows, cols = LAYERS * self.side, self.side
        try:
            bodies = [av.Packet(bytes(self._payload[offset:offset + size])) for offset, size, _ in packets]
            for packet in [*bodies, None]:
                for frame in context.decode(packet):
                    if (frame.width, frame.height, frame.format.name) != (cols, rows, "yuv444p10le"):
                        raise SequenceError(f"a .sogv stream decodes to {frame.width}x{frame.height} "
                                            f"{frame.format.name}, not the manifest's {cols}x{rows} yuv444p10le")
                    yield np.stack([_samples(plane, rows, cols) for plane in frame.planes[:3]]).astype(np.float64)
        except av.error.FFmpegError as error:
            raise SequenceError(f"a .sogv stream does not decode: {error}") from None


def encode_sequence(scenes: Iterable[GaussianScene], fps: float, codec: Codec = DEFAULT_CODEC,
                    extra: dict[str, Any] | None = None) -> bytes:
    """The scenes, in order, as one ``.sogv`` file (see `SequenceWriter`)."""
    writer = SequenceWriter(fps, codec, extra)
    for scene in scenes:
        writer.add(scene)
    return writer.finish()


def decode_sequence_frame(data: bytes | bytearray | memoryview, index: int, *,
                          max_gaussians: int = MAX_GAUSSIANS) -> GaussianScene:
    """Frame `index` of a ``.sogv`` file (`SequenceError` if the file is bad or has no such frame)."""
    return SequenceReader(data, max_gaussians=max_gaussians).frame(index)
