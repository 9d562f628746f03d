"""Scene file formats: a `GaussianScene` (or a `Prediction`) <-> the bytes of one file.

The writers (`encode_ply`, `encode_splat`, `encode_spz`, `encode_sog`, `encode_glb`, `encode_prediction_json`)
and the readers (`read_ply`, `decode_splat`, `decode_spz`, `decode_sog`, which the renderer uses to load scenes).
This package knows nothing of rendering nor of which outputs a request may ask for: that registry is `app.outputs`.

- ``ply`` (`app.formats.ply`): the reference 3DGS PLY, with or without its camera metadata elements.
- ``splat`` (`app.formats.splat`): antimatter15's 32-byte records for web viewers.
- ``spz`` (`app.formats.spz`): Niantic's gzip-compressed format (RUB axes inside, converted for you).
- ``sog`` (`app.formats.sog`): PlayCanvas's SOG v2, a zip of lossless WebP images (the PLY's axes).
  Read back by `app.formats.sog_reader`.
- ``glb`` (`app.formats.glb`): binary glTF 2.0 with Khronos's ``KHR_gaussian_splatting`` (glTF axes).
- ``json`` (`app.formats.json`): the arrays and the prediction's metadata.
"""

from __future__ import annotations

from app.formats.glb import encode_glb
from app.formats.json import encode_prediction_json
from app.formats.ply import encode_ply, read_ply
from app.formats.sog import encode_sog
from app.formats.sog_reader import decode_sog
from app.formats.splat import decode_splat, encode_splat
from app.formats.spz import decode_spz, encode_spz

__all__ = [
    "decode_sog",
    "decode_splat",
    "decode_spz",
    "encode_glb",
    "encode_ply",
    "encode_prediction_json",
    "encode_sog",
    "encode_splat",
    "encode_spz",
    "read_ply",
]
