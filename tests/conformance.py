"""Conformance with the reference implementation: the data in `tests/data/conformance` (see its README)
and our two pieces of code for it, the seeded synthetic weights and the PLY check.

- `fill_state_dict(shapes, seed)`: the synthetic value of every state_dict entry, from its name, shape,
  rank in sorted key order and the seed, so any implementation with the official keys and shapes gets
  the same numbers (the reference outputs were made with seed 0).
- `ply_problems(path, reference)`: what differs between a PLY file and the reference outputs; empty
  when the file conforms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData

DATA_DIR = Path(__file__).resolve().parent / "data" / "conformance"
KIT_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance"
"""The kit the data comes from, where CI keeps it beside the checkout (absent in a plain clone)."""

MANIFEST = DATA_DIR / "sharp_state_dict.tsv"
PHOTO = DATA_DIR / "coffee.png"
REFERENCE = DATA_DIR / "coffee_s0"
"""`coffee_s0.json` and `coffee_s0.npz`: the reference run on the photo with seed-0 weights."""

TOLERANCE = 1e-4
"""Relative L2 error allowed: two correct float32 implementations differ by about 1e-5, a wrong layer by ~1."""

_SEED_STRIDE = 1_000_003


# ------------------------------------------------------------------------------------- synthetic weights


def read_manifest(path: Path = MANIFEST) -> dict[str, tuple[int, ...]]:
    """The official state_dict's shapes by key (one `key<TAB>AxBxC<TAB>dtype<TAB>kind` line per tensor)."""
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, *_ = line.split("\t")
        shapes[name] = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
    return shapes


def synthetic_tensor(name: str, shape: tuple[int, ...], rank: int, seed: int) -> torch.Tensor:
    """The value of the state_dict entry `name`, number `rank` (from 0) in sorted key order (float32).

    A standard normal draw from its own generator, scaled by what the entry is: a matrix or kernel
    weight by 1/sqrt(fan_in), a normalisation weight to 1 + 0.1 z, a bias to 0.02 z, a layer-scale
    gamma to 0.1 + 0.01 z, anything else (class token, position embedding) to 0.02 z.
    """
    generator = torch.Generator().manual_seed(seed * _SEED_STRIDE + rank)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    kind = name.rsplit(".", 1)[-1]
    if kind == "weight" and len(shape) >= 2:
        return noise / math.sqrt(math.prod(shape[1:]))
    if kind == "weight":
        return 1.0 + 0.1 * noise
    if kind == "gamma":
        return 0.1 + 0.01 * noise
    return 0.02 * noise  # bias, cls_token, pos_embed, ...


def fill_state_dict(state_dict: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A new state_dict with the keys, shapes and dtypes of `state_dict` (meta tensors are fine),
    every entry set to its `synthetic_tensor`."""
    return {
        name: synthetic_tensor(name, tuple(state_dict[name].shape), rank, seed).to(state_dict[name].dtype)
        for rank, name in enumerate(sorted(state_dict))
    }


# ---------------------------------------------------------------------------------------------- PLY check


def covariances(scales: np.ndarray, quaternions_wxyz: np.ndarray) -> np.ndarray:
    """(N, 3, 3) float64 R diag(s^2) R^T from (N, 3) linear scales and (N, 4) (w, x, y, z) quaternions (of any
    length): unlike the (scale, rotation) pair, unique for each Gaussian."""
    q = np.asarray(quaternions_wxyz, np.float64)
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    rotation = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=1).reshape(-1, 3, 3)
    return np.einsum("nij,nj,nkj->nik", rotation, np.asarray(scales, np.float64) ** 2, rotation)


def relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(got).all():
        return math.inf
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))


def ply_problems(path: Path, reference: Path = REFERENCE, tolerance: float = TOLERANCE) -> list[str]:
    """Every way the PLY at `path` differs from the reference run; empty when it conforms.

    Checks: the header, byte for byte; the vertex count; no bytes after the last element; on the
    reference's sampled vertices, positions, SH DC colours, opacity logits and covariances (from the log
    scales and quaternions, which an SVD leaves ambiguous in sign and order) within relative L2
    `tolerance`; the metadata elements after the vertices, integers equal and floats within `tolerance`.
    """
    meta = json.loads(reference.with_suffix(".json").read_text())
    gold = np.load(reference.with_suffix(".npz"))
    raw = path.read_bytes()
    header_end = raw.index(b"end_header\n") + len(b"end_header\n")
    problems = []
    if raw[:header_end].decode("ascii", "replace") != meta["ply_header"]:
        problems.append(f"header differs: {raw[:header_end]!r}")
    ply = PlyData.read(str(path))
    if ply["vertex"].count != meta["num_gaussians"]:
        return [*problems, f"{ply['vertex'].count} vertices, reference {meta['num_gaussians']}"]
    if header_end + sum(element.data.nbytes for element in ply.elements) != len(raw):
        problems.append(f"{len(raw)} bytes, not the header plus the elements")

    vertices = ply["vertex"].data[gold["index"]]
    columns = lambda *names: np.stack([vertices[n].astype(np.float64) for n in names], axis=1)  # noqa: E731
    rows = gold["ply_vertex_rows"].astype(np.float64)
    quantities = {
        "positions": (columns("x", "y", "z"), rows[:, 0:3]),
        "f_dc": (columns("f_dc_0", "f_dc_1", "f_dc_2"), rows[:, 3:6]),
        "opacity logits": (columns("opacity"), rows[:, 6:7]),
        "covariances": (covariances(np.exp(columns("scale_0", "scale_1", "scale_2")),
                                    columns("rot_0", "rot_1", "rot_2", "rot_3")),
                        covariances(np.exp(rows[:, 7:10]), rows[:, 10:14])),
    }
    for name, (got, want) in quantities.items():
        if (error := relative_l2(got, want)) > tolerance:
            problems.append(f"{name}: relative L2 error {error:.3e} > {tolerance:g}")

    tail, offset = gold["ply_tail"].tobytes(), 0
    for element in ply.elements[1:]:
        got = element.data
        want = np.frombuffer(tail, dtype=got.dtype, count=len(got), offset=offset) if offset < len(tail) else None
        offset += got.nbytes
        field = got.dtype.names[0]
        if want is None:
            problems.append(f"metadata {element.name}: not in the reference")
        elif got.dtype[field].kind == "f":
            if not np.allclose(got[field], want[field], rtol=tolerance, atol=tolerance):
                problems.append(f"metadata {element.name}: {got[field].tolist()} != {want[field].tolist()}")
        elif not np.array_equal(got[field], want[field]):
            problems.append(f"metadata {element.name}: {got[field].tolist()} != {want[field].tolist()}")
    if offset != len(tail):
        problems.append(f"metadata: {offset} bytes, reference {len(tail)}")
    return problems
