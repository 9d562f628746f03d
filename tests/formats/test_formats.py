"""Output formats: real bytes parsed back (by hand, by plyfile, by gsply, by the stdlib), round trips,
the reference PLY byte for byte, and the registry."""

from __future__ import annotations

import base64
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from app.files import write_atomically
from app.formats.json import encode_json
from app.formats.ply import (
    TAIL_BYTES,
    VERTEX_PROPERTIES,
    disparity_quantiles,
    encode_ply,
    iter_ply_chunks,
    ply_header,
    ply_num_bytes,
    read_ply,
)
from app.formats.splat import RECORD_BYTES, decode_splat, encode_splat, splat_order
from app.formats.spz import HEADER_BYTES, HEADER_STRUCT, SpzHeader, decode_spz, encode_spz, spz_payload
from app.gaussians import SH_C0, GaussianScene, linear_to_srgb, srgb_to_linear
from tests.conformance import covariances, ply_problems
from tests.helpers import random_scene

REPO = Path(__file__).resolve().parents[2]
FULL_N = 2 * 768 * 768  # 1,179,648 Gaussians, what SHARP predicts for any photo


def decode_json_arrays(document: bytes | str) -> dict[str, np.ndarray]:
    """The five arrays of an `encode_json` document as float32 arrays (either encoding; null -> NaN)."""
    body = json.loads(document)
    out: dict[str, np.ndarray] = {}
    for name in ("positions", "scales", "rotations", "opacities", "colors"):
        value = body[name]
        if isinstance(value, dict):
            assert value["dtype"] == "float32" and value["byteorder"] == "little"
            out[name] = np.frombuffer(base64.b64decode(value["data"]), dtype="<f4").reshape(value["shape"])
        else:
            width = {"rotations": 4, "opacities": 1}.get(name, 3)
            rows = [[np.nan if v is None else v for v in row] for row in value]
            out[name] = np.array(rows, dtype=np.float64).reshape(-1, width).astype(np.float32)
    return out


def write_ply_with_plyfile(scene: GaussianScene, path: Path, vertex_only: bool = False) -> Path:
    """An independent writer of the reference layout, built on plyfile (what apple/ml-sharp uses)."""
    from plyfile import PlyData, PlyElement

    f_dc = (linear_to_srgb(scene.colors) - np.float32(0.5)) / np.float32(SH_C0)
    opacity = scene.opacities.astype(np.float32)
    columns = {
        "x": scene.positions[:, 0], "y": scene.positions[:, 1], "z": scene.positions[:, 2],
        **{f"f_dc_{i}": f_dc[:, i] for i in range(3)},
        "opacity": np.log(opacity / (np.float32(1) - opacity)),
        **{f"scale_{i}": np.log(scene.scales[:, i]) for i in range(3)},
        **{f"rot_{i}": scene.rotations[:, i] for i in range(4)},
    }
    vertices = np.empty(scene.num_gaussians, dtype=[(name, "f4") for name in VERTEX_PROPERTIES])
    for name in VERTEX_PROPERTIES:
        vertices[name] = columns[name]
    elements = [PlyElement.describe(vertices, "vertex")]
    if not vertex_only:
        import torch

        w, h, f, n = scene.image_width, scene.image_height, scene.f_px, scene.num_gaussians
        disparity = 1.0 / torch.from_numpy(np.ascontiguousarray(scene.positions[:, 2], dtype=np.float32))
        for name, dtype, value in [
            ("extrinsic", "f4", np.eye(4).flatten()),
            ("intrinsic", "f4", np.array([f, 0, w * 0.5, 0, f, h * 0.5, 0, 0, 1])),
            ("image_size", "u4", np.array([w, h])),
            ("frame", "i4", np.array([1, n])),
            ("disparity", "f4", torch.quantile(disparity, q=torch.tensor([0.1, 0.9])).numpy()),
            ("color_space", "u1", np.array([0])),  # sRGB
            ("version", "u1", np.array([1, 5, 0])),
        ]:
            array = np.empty(len(value), dtype=[(name, dtype)])
            array[:] = value
            elements.append(PlyElement.describe(array, name))
    PlyData(elements).write(str(path))
    return path


def relative_cov_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Frobenius |a - b| / |b| per Gaussian."""
    return np.linalg.norm(a - b, axis=(1, 2)) / np.linalg.norm(b, axis=(1, 2))


def vertex_rows(data: bytes, n: int) -> np.ndarray:
    """The (n, 14) float32 vertex block of a PLY, located by hand after 'end_header\\n'."""
    start = data.index(b"end_header\n") + len(b"end_header\n")
    return np.frombuffer(data, "<f4", count=14 * n, offset=start).reshape(n, 14)


# ----------------------------------------------------------------------------------------------- PLY


def test_ply_header_and_size_match_the_reference(conformance_dir: Path) -> None:
    meta = json.loads((conformance_dir / "coffee_s0.json").read_text())
    # Zero-stride arrays: the header needs only N and the camera.
    full = GaussianScene(*(np.broadcast_to(np.float32(0.5), (FULL_N, k)) for k in (3, 3, 4, 3)),
                         np.broadcast_to(np.float32(0.5), (FULL_N,)), 500.0, 600, 400)
    assert ply_header(full).decode("ascii") == meta["ply_header"]
    assert ply_num_bytes(full) == meta["ply_bytes"] == 66_061_086
    for n in (0, 1, 7, 1000):
        scene = random_scene(n) if n else random_scene(1).select(np.zeros(0, dtype=np.int64))
        data = encode_ply(scene)
        assert len(data) == ply_num_bytes(scene) == 663 + len(str(n)) + 56 * n + 128
        assert len(ply_header(scene)) == 663 + len(str(n))


def test_ply_rows_and_metadata_match_reference_outputs(conformance_dir: Path) -> None:
    gold = np.load(conformance_dir / "coffee_s0.npz")
    scene = GaussianScene(gold["mean_vectors"], gold["singular_values"], gold["quaternions"], gold["colors"],
                          gold["opacities"], 500.0, 600, 400)
    data = encode_ply(scene)
    n = scene.num_gaussians
    rows = vertex_rows(data, n)
    ref = gold["ply_vertex_rows"]
    np.testing.assert_array_equal(rows[:, 0:3], ref[:, 0:3])  # positions copied
    np.testing.assert_array_equal(rows[:, 10:14], ref[:, 10:14])  # quaternions copied
    np.testing.assert_allclose(rows[:, 3:10], ref[:, 3:10], rtol=1e-6, atol=1e-6)  # f_dc, logit, log scale
    tail, ref_tail = data[-TAIL_BYTES:], gold["ply_tail"].tobytes()
    assert tail[:108] == ref_tail[:108]  # extrinsic, intrinsic, image_size
    assert struct.unpack("<2i", tail[108:116]) == (1, n)  # frame (the reference had 1,179,648)
    assert tail[124:] == ref_tail[124:] == bytes([0, 1, 5, 0])  # color_space, version


def _full_size_scene_matching_reference(gold: dict, ref_tail: bytes) -> GaussianScene:
    """1,179,648 Gaussians: the reference's sampled ones at their indices, filler elsewhere whose depths
    make the disparity quantiles come out exactly as the reference's."""
    q10, q90 = np.frombuffer(ref_tail, "<f4", count=2, offset=116)
    index = gold["index"]
    sampled = np.float32(1) / gold["mean_vectors"][:, 2]
    ranks = [int(np.float32(q) * np.float32(FULL_N - 1)) for q in (0.1, 0.9)]  # as torch: 117964, 1061682
    below10 = int((sampled < q10).sum())
    between = int(((sampled > q10) & (sampled < q90)).sum())
    assert not np.isin(sampled, [q10, q90]).any()
    low, block = ranks[0] - below10 - 2, 6
    mid = ranks[1] - 2 - low - below10 - block - between
    high = FULL_N - index.size - low - 2 * block - mid
    disparity = np.concatenate([
        np.full(low, sampled.min() / 2), np.full(block, q10), np.full(mid, (q10 + q90) / 2),
        np.full(block, q90), np.full(high, sampled.max() * 2)]).astype(np.float32)

    def exact_depth(d: np.float32) -> np.float32:  # a z whose float32 reciprocal is d exactly
        z = np.float32(1) / d
        for _ in range(64):
            if np.float32(1) / z == d:
                return z
            z = np.nextafter(z, np.float32(np.inf) if np.float32(1) / z > d else np.float32(0))
        raise AssertionError(f"no float32 depth for disparity {d}")

    depth = np.float32(1) / disparity
    for d in (q10, q90):
        depth[disparity == d] = exact_depth(d)
    filler = np.ones(FULL_N, dtype=bool)
    filler[index] = False

    def full(sampled_values: np.ndarray, fill: float, width: int) -> np.ndarray:
        out = np.full((FULL_N, width), fill, dtype=np.float32)
        out[index] = sampled_values.reshape(len(index), width)
        return out

    positions = full(gold["mean_vectors"], 0.0, 3)
    positions[filler, 2] = depth
    rotations = full(gold["quaternions"], 0.0, 4)
    rotations[filler, 0] = 1.0
    return GaussianScene(positions, full(gold["singular_values"], 0.01, 3), rotations,
                         full(gold["colors"], 0.5, 3), full(gold["opacities"], 0.5, 1).reshape(-1),
                         500.0, 600, 400)


def test_full_size_ply_passes_the_conformance_checker(conformance_dir: Path, tmp_path: Path) -> None:
    gold = dict(np.load(conformance_dir / "coffee_s0.npz"))
    scene = _full_size_scene_matching_reference(gold, gold["ply_tail"].tobytes())
    path = write_atomically(tmp_path / "full.ply", iter_ply_chunks(scene))
    assert path.stat().st_size == 66_061_086
    assert ply_problems(path) == []

    data = bytearray(path.read_bytes())
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    first = header_end + 56 * int(gold["index"][1])  # a sampled vertex: its x, then its opacity logit
    data[first:first + 4] = struct.pack("<f", 1e3)
    data[first + 24:first + 28] = struct.pack("<f", float("nan"))
    data[-1] ^= 1  # the last metadata byte
    path.write_bytes(bytes(data).replace(b"ply\nformat", b"ply\ncomment written elsewhere\nformat", 1))
    problems = ply_problems(path)
    assert [p.split(":")[0].split(" ")[0] for p in problems] == ["header", "positions", "opacity", "metadata"]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 4096])
def test_disparity_quantiles_equal_torch_quantile(n: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(n)
    z = rng.uniform(0.3, 80.0, n).astype(np.float32)
    z[: n // 3] = z[0]  # ties
    want = torch.quantile(1.0 / torch.from_numpy(z), torch.tensor([0.1, 0.9])).numpy()
    np.testing.assert_array_equal(disparity_quantiles(z), want)


def test_disparity_quantiles_edge_cases() -> None:
    assert np.isnan(disparity_quantiles(np.zeros(0, np.float32))).all()
    assert np.isnan(disparity_quantiles(np.array([1.0, np.nan, 2.0], np.float32))).all()
    np.testing.assert_array_equal(disparity_quantiles(np.zeros(5, np.float32)), [np.inf, np.inf])  # z = 0


def test_ply_round_trip_and_plyfile_reads_it(tmp_path: Path) -> None:
    from plyfile import PlyData

    scene = random_scene(3000, seed=1)
    path = write_atomically(tmp_path / "scene.ply", iter_ply_chunks(scene))
    data = path.read_bytes()
    assert data == encode_ply(scene)
    ply = PlyData.read(str(path))  # an independent parser
    assert [e.name for e in ply.elements] == ["vertex", "extrinsic", "intrinsic", "image_size", "frame",
                                              "disparity", "color_space", "version"]
    v = ply["vertex"].data
    assert list(v.dtype.names) == list(VERTEX_PROPERTIES)
    np.testing.assert_array_equal(np.column_stack([v["x"], v["y"], v["z"]]), scene.positions)
    np.testing.assert_allclose(np.exp(v["scale_1"]), scene.scales[:, 1], rtol=1e-6)
    np.testing.assert_allclose(0.5 + SH_C0 * v["f_dc_2"], scene.colors_srgb()[:, 2], atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"])), scene.opacities, atol=1e-6)
    np.testing.assert_array_equal(ply["intrinsic"].data["intrinsic"], [500, 0, 300, 0, 500, 200, 0, 0, 1])
    np.testing.assert_array_equal(ply["image_size"].data["image_size"], [600, 400])
    np.testing.assert_array_equal(ply["frame"].data["frame"], [1, 3000])
    np.testing.assert_array_equal(ply["version"].data["version"], [1, 5, 0])

    for back in (read_ply(path), read_ply(data)):
        np.testing.assert_array_equal(back.positions, scene.positions)
        np.testing.assert_array_equal(back.rotations, scene.rotations)
        np.testing.assert_allclose(back.scales, scene.scales, rtol=1e-6)
        np.testing.assert_allclose(back.colors, scene.colors, atol=2e-6)
        np.testing.assert_allclose(back.opacities, scene.opacities, atol=1e-6)
        assert (back.f_px, back.image_width, back.image_height) == (500.0, 600, 400)


def test_ply_vertex_only(tmp_path: Path) -> None:
    from plyfile import PlyData

    scene = random_scene(500)
    data = encode_ply(scene, vertex_only=True)
    assert len(data) == ply_num_bytes(scene, vertex_only=True) == 356 + 3 + 56 * 500
    assert data.endswith(vertex_rows(data, 500).tobytes())
    assert b"element extrinsic" not in data
    path = tmp_path / "v.ply"
    path.write_bytes(data)
    assert [e.name for e in PlyData.read(str(path)).elements] == ["vertex"]
    back = read_ply(data)
    assert (back.f_px, back.image_width, back.image_height) == (0.0, 0, 0)
    np.testing.assert_array_equal(back.positions, scene.positions)


def test_ply_saturated_opacities_are_infinite_logits() -> None:
    scene = random_scene(4)
    scene = GaussianScene(scene.positions, scene.scales, scene.rotations, scene.colors,
                          np.array([0.0, 1.0, 0.5, 0.25], np.float32), 500.0, 600, 400)
    logits = vertex_rows(encode_ply(scene), 4)[:, 6]
    np.testing.assert_array_equal(logits[:3], [-np.inf, np.inf, 0.0])
    np.testing.assert_allclose(logits[3], np.log(1 / 3), rtol=1e-6)
    np.testing.assert_array_equal(read_ply(encode_ply(scene)).opacities[:3], [0.0, 1.0, 0.5])


@pytest.mark.parametrize("vertex_only", [False, True])
def test_ply_bytes_identical_to_plyfile_writers(tmp_path: Path, vertex_only: bool) -> None:
    scene = random_scene(1500, seed=2)
    ours = encode_ply(scene, vertex_only=vertex_only)
    path = write_ply_with_plyfile(scene, tmp_path / "plyfile.ply", vertex_only=vertex_only)
    assert path.read_bytes() == ours


def test_iter_ply_chunks_are_independent_blocks() -> None:
    scene = random_scene(1000)
    chunks = list(iter_ply_chunks(scene, chunk_bytes=56 * 300 + 5))  # kept, not consumed one at a time
    assert [len(c) for c in chunks[1:-1]] == [56 * 300] * 3 + [56 * 100]
    assert len(chunks[0]) == len(ply_header(scene)) and len(chunks[-1]) == TAIL_BYTES
    assert b"".join(chunks) == encode_ply(scene)
    with pytest.raises(ValueError):
        next(iter(iter_ply_chunks(scene, chunk_bytes=0)))


def test_a_streamed_ply_replaces_a_file_atomically_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.ply"
    target.write_bytes(b"old")
    scene = random_scene(200)
    assert write_atomically(target, iter_ply_chunks(scene)) == target
    assert target.read_bytes() == encode_ply(scene)
    assert target.stat().st_mode & 0o777 == 0o644
    bad = GaussianScene(scene.positions, scene.scales, np.full((200, 4), "x"), scene.colors,
                        scene.opacities, 500.0, 600, 400)  # rotations that cannot become float32
    with pytest.raises(ValueError):
        write_atomically(target, iter_ply_chunks(bad))
    assert target.read_bytes() == encode_ply(scene)  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ply"]  # no temporary file left


def test_read_ply_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        read_ply(b"not a ply at all")
    data = encode_ply(random_scene(10))
    with pytest.raises(ValueError, match="truncated"):
        read_ply(data[:-200])


# --------------------------------------------------------------------------------------------- splat


def test_splat_bytes_by_hand() -> None:
    srgb = np.array([[0.2, 0.4, 1.0], [0.0, 0.6, 0.8], [1.0, 1.0, 1.0]], np.float32)
    q = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, -2]], np.float32)
    scene = GaussianScene(
        positions=np.array([[1, 2, 3], [-1, -2, 4], [0, 0, 5]], np.float32),
        scales=np.array([[0.1, 0.1, 0.1], [0.2, 0.1, 0.05], [0.01, 0.01, 0.01]], np.float32),
        rotations=q, colors=srgb_to_linear(srgb), opacities=np.array([0.2, 0.9, 0.5], np.float32),
        f_px=500.0, image_width=600, image_height=400,
    )
    data = encode_splat(scene)
    assert len(data) == 3 * RECORD_BYTES == 96
    records = [struct.unpack("<3f3f4B4B", data[i:i + 32]) for i in range(0, 96, 32)]
    # opacity x volume: 0.9e-3 (#1) > 0.2e-3 (#0) > 0.5e-6 (#2)
    assert [r[0:3] for r in records] == [(-1.0, -2.0, 4.0), (1.0, 2.0, 3.0), (0.0, 0.0, 5.0)]
    np.testing.assert_allclose(records[0][3:6], [0.2, 0.1, 0.05], rtol=1e-7)
    assert records[0][6:10] == (0, 153, 204, 230)  # sRGB * 255, opacity 0.9 * 255 = 229.5 -> 230
    assert records[1][6:10] == (51, 102, 255, 51)
    assert records[0][10:14] == (219, 219, 128, 128)  # (1, 1, 0, 0)/sqrt 2 -> 0.7071 * 128 + 128
    assert records[1][10:14] == (255, 128, 128, 128)  # w = 1 -> 256, clipped
    assert records[2][10:14] == (128, 128, 128, 0)  # z = -1 -> 0
    assert np.array_equal(splat_order(scene), [1, 0, 2])
    unsorted = encode_splat(scene, sort=False)
    assert unsorted[:12] == struct.pack("<3f", 1, 2, 3)


def test_splat_round_trip() -> None:
    scene = random_scene(4000, seed=3)
    data = encode_splat(scene)
    back = decode_splat(data, f_px=500.0, image_width=600, image_height=400)
    ref = scene.select(splat_order(scene))
    key = ref.opacities.astype(np.float64) * ref.scales.astype(np.float64).prod(axis=1)
    assert (np.diff(key) <= 0).all()
    np.testing.assert_array_equal(back.positions, ref.positions)
    np.testing.assert_array_equal(back.scales, ref.scales)
    np.testing.assert_allclose(linear_to_srgb(back.colors), ref.colors_srgb(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.opacities, ref.opacities, atol=0.5 / 255 + 1e-6)
    err = relative_cov_error(covariances(ref.scales, back.rotations), covariances(ref.scales, ref.rotations))
    assert np.median(err) < 0.02 and err.max() < 0.15


def test_splat_rejects_a_partial_record() -> None:
    with pytest.raises(ValueError):
        decode_splat(b"\0" * 33)


# ----------------------------------------------------------------------------------------------- SPZ


def spz_header(data: bytes) -> SpzHeader:
    """The 16-byte header at the start of a .spz file's gzip stream."""
    return SpzHeader(*HEADER_STRUCT.unpack(gzip.decompress(data)[:HEADER_BYTES]))


def _check_spz_decoded(scene: GaussianScene, positions: np.ndarray, scales: np.ndarray, quats: np.ndarray,
                       opacities: np.ndarray, srgb: np.ndarray, rotation_tol: float) -> None:
    """Tolerances of the SPZ quantisation; all arrays in OpenCV axes, quats (w, x, y, z), scales linear."""
    np.testing.assert_allclose(positions, scene.positions, atol=0.5 / 4096 + 1e-5)
    np.testing.assert_allclose(opacities, scene.opacities, atol=0.5 / 255 + 1e-6)
    color_step = SH_C0 / (0.15 * 255)
    np.testing.assert_allclose(srgb, scene.colors_srgb(), atol=color_step / 2 + 1e-5)
    np.testing.assert_allclose(np.log(scales), np.log(scene.scales), atol=1 / 32 + 1e-5)
    want = covariances(scene.scales, scene.rotations)
    rotation_only = relative_cov_error(covariances(scene.scales, quats), want)
    assert rotation_only.max() < rotation_tol, rotation_only.max()
    full = relative_cov_error(covariances(scales, quats), want)
    assert full.max() < 0.07 + rotation_tol, full.max()  # scales within +-3.1 % -> covariance +-6.5 %


@pytest.mark.parametrize(("version", "rotation_tol"), [(3, 0.012), (2, 0.35)])
def test_spz_round_trip_through_gsply(tmp_path: Path, version: int, rotation_tol: float) -> None:
    gsply = pytest.importorskip("gsply", reason="gsply is the independent SPZ reader")
    scene = random_scene(3000, seed=5)
    path = tmp_path / "scene.spz"
    path.write_bytes(encode_spz(scene, version=version))
    g = gsply.read_spz(path)  # RUB axes, log scales, opacity logits, SH DC colours
    assert len(g.means) == 3000
    flip = np.array([1, -1, -1], np.float32)
    _check_spz_decoded(scene, g.means * flip, np.exp(g.scales), g.quats * np.array([1, 1, -1, -1]),
                       1 / (1 + np.exp(-g.opacities.astype(np.float64))), 0.5 + SH_C0 * g.sh0, rotation_tol)


@pytest.mark.parametrize(("version", "rotation_tol"), [(3, 0.012), (2, 0.35)])
def test_spz_round_trip_own_decoder(version: int, rotation_tol: float) -> None:
    scene = random_scene(3000, seed=6)
    back = decode_spz(encode_spz(scene, version=version), f_px=500.0, image_width=600, image_height=400)
    _check_spz_decoded(scene, back.positions, back.scales, back.rotations, back.opacities,
                       linear_to_srgb(back.colors), rotation_tol)
    assert (back.f_px, back.image_width, back.image_height) == (500.0, 600, 400)


def test_spz_bytes_by_hand() -> None:
    rotations = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0.6, 0, 0.8, 0]], np.float32)
    scene = GaussianScene(
        positions=np.array([[1.5, -0.25, 2.0], [0, 0, 1], [-3, 1, 7]], np.float32),
        scales=np.exp(np.array([[-2, -3, -4], [-5, -5, -5], [0, 0, 0]], np.float32)),
        rotations=rotations, colors=srgb_to_linear(np.full((3, 3), 0.5 + SH_C0, np.float32)),
        opacities=np.array([0.5, 1.0, 0.0], np.float32), f_px=500.0, image_width=600, image_height=400,
    )
    data = encode_spz(scene)
    raw = gzip.decompress(data)  # the stdlib, not our decoder
    assert raw[:4] == b"NGSP"
    assert struct.unpack("<IIIBBBB", raw[:16]) == (0x5053474E, 3, 3, 0, 12, 0, 0)
    assert tuple(spz_header(data)) == (0x5053474E, 3, 3, 0, 12, 0, 0)
    assert len(raw) == 16 + 20 * 3
    n, body = 3, raw[16:]
    xyz = [int.from_bytes(body[i:i + 3], "little", signed=True) / 4096 for i in range(0, 9, 3)]
    assert xyz == [1.5, 0.25, -2.0]  # RUB: y and z negated
    assert body[9 * n:10 * n] == bytes([128, 255, 0])  # alphas: round(o * 255), 127.5 -> 128
    assert set(body[10 * n:13 * n]) == {round(0.15 * 255 + 127.5)}  # f_dc = 1 -> 166
    assert body[13 * n:16 * n] == bytes([128, 112, 96, 80, 80, 80, 160, 160, 160])  # (log s + 10) * 16
    comp = [int.from_bytes(body[16 * n + 4 * i:16 * n + 4 * i + 4], "little") for i in range(3)]
    assert comp[0] == 3 << 30  # identity: w largest, x = y = z = 0
    assert comp[1] == 434  # xyzw (0.8, 0, 0, 0.6): x largest; w = 0.6 -> round(511 * 0.6 / sqrt .5)
    # (0.6, 0, 0.8, 0) in RDF is xyzw (0, -0.8, 0, 0.6) in RUB: y largest and negative, so all negated.
    assert comp[2] == (1 << 30) | (512 << 20) | (512 << 10) | (512 | 434)


def test_spz_size_and_realistic_scene() -> None:
    scene = random_scene(8192, seed=5)
    spz = encode_spz(scene)
    assert len(spz) <= ply_num_bytes(scene) / 3
    assert len(spz_payload(scene)) == 16 + 20 * scene.num_gaussians
    back = decode_spz(spz)
    np.testing.assert_allclose(back.positions, scene.positions, atol=0.5 / 4096 + 1e-5)


def test_spz_wide_scenes_use_fewer_fractional_bits() -> None:
    scene = random_scene(100)
    wide = GaussianScene(scene.positions * 1000, scene.scales, scene.rotations, scene.colors,
                         scene.opacities, 500.0, 600, 400)  # up to 30 km
    data = encode_spz(wide)
    bits = spz_header(data).fractional_bits
    assert bits < 12 and np.abs(wide.positions).max() * 2**bits < 2**23
    np.testing.assert_allclose(decode_spz(data).positions, wide.positions, atol=0.5 / 2**bits + 1e-3)


def test_spz_is_deterministic_whatever_the_thread_count() -> None:
    scene = random_scene(150_000, seed=7)  # 3 MB: several of the compressor's 1 MiB pieces
    one = encode_spz(scene, workers=1)
    assert one == encode_spz(scene, workers=4) == encode_spz(scene)
    assert gzip.decompress(one) == spz_payload(scene).tobytes()
    assert one[:8] == bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0])  # gzip, deflate, no optional fields, mtime 0
    for level in range(4):
        assert gzip.decompress(encode_spz(scene, compresslevel=level)) == spz_payload(scene).tobytes()
    with pytest.raises(ValueError, match="ISA-L level"):
        encode_spz(scene, compresslevel=6)
    empty = scene.select(np.arange(0))
    assert gzip.decompress(encode_spz(empty)) == spz_payload(empty).tobytes()
    assert decode_spz(encode_spz(empty)).num_gaussians == 0


def test_spz_rejects_other_streams() -> None:
    with pytest.raises(ValueError, match="magic"):
        decode_spz(gzip.compress(b"\0" * 64))
    with pytest.raises(ValueError, match="truncated"):
        decode_spz(gzip.compress(gzip.decompress(encode_spz(random_scene(10)))[:-5]))
    with pytest.raises(ValueError):
        encode_spz(random_scene(10), version=4)


# ---------------------------------------------------------------------------------------------- JSON


def _strict_json(data: bytes) -> dict:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(data, parse_constant=reject)


def test_encode_json_lists() -> None:
    scene = random_scene(300, seed=9)
    data = encode_json(scene, {"name": "photo", "f_px": np.float32(500.0), "num_gaussians": -1})
    body = _strict_json(data)
    assert list(body) == ["positions", "scales", "rotations", "opacities", "colors", "metadata"]
    assert body["metadata"] == {"name": "photo", "f_px": 500.0, "num_gaussians": 300, "color_space": "srgb",
                                "encoding": "list"}
    for name, want in [("positions", scene.positions), ("scales", scene.scales),
                       ("rotations", scene.rotations), ("opacities", scene.opacities.reshape(-1, 1)),
                       ("colors", scene.colors_srgb())]:
        got = np.array(body[name], dtype=np.float64)
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got.astype(np.float32), want)  # shortest float32 repr round-trips
    assert all(0 <= c <= 1 for row in body["colors"] for c in row)


def test_encode_json_base64_is_bit_exact() -> None:
    scene = random_scene(300, seed=10)
    body = _strict_json(encode_json(scene, {}, encoding="base64"))
    assert body["metadata"]["encoding"] == "base64"
    entry = body["rotations"]
    assert {k: entry[k] for k in ("dtype", "shape", "byteorder")} == {"dtype": "float32", "shape": [300, 4],
                                                                      "byteorder": "little"}
    rotations = np.frombuffer(base64.b64decode(entry["data"]), "<f4").reshape(300, 4)
    np.testing.assert_array_equal(rotations, scene.rotations)
    arrays = decode_json_arrays(encode_json(scene, {}, encoding="base64"))
    np.testing.assert_array_equal(arrays["opacities"], scene.opacities.reshape(-1, 1))
    np.testing.assert_array_equal(arrays["colors"], scene.colors_srgb())
    with pytest.raises(ValueError):
        encode_json(scene, {}, encoding="hex")  # type: ignore[arg-type]


def test_encode_json_non_finite_values_stay_valid_json() -> None:
    scene = random_scene(3)
    positions = scene.positions.copy()
    positions[0] = [np.nan, np.inf, -np.inf]
    odd = GaussianScene(positions, scene.scales, scene.rotations, scene.colors, scene.opacities,
                        500.0, 600, 400)
    body = _strict_json(encode_json(odd, {}))
    assert body["positions"][0] == [None, None, None]
    assert np.isnan(decode_json_arrays(encode_json(odd, {}))["positions"][0]).all()
    packed = decode_json_arrays(encode_json(odd, {}, encoding="base64"))["positions"]
    np.testing.assert_array_equal(packed, positions)  # base64 keeps NaN and inf


def test_any_array_layout_and_dtype_gives_the_same_bytes() -> None:
    scene = random_scene(500, seed=13)
    odd = GaussianScene(  # Fortran order, a strided view, float64
        positions=np.asfortranarray(scene.positions), scales=np.asfortranarray(scene.scales),
        rotations=np.repeat(scene.rotations, 2, axis=0)[::2], colors=scene.colors.astype(np.float64),
        opacities=np.repeat(scene.opacities, 3)[::3], f_px=500.0, image_width=600, image_height=400,
    )
    assert not odd.positions.flags.c_contiguous and not odd.rotations.flags.c_contiguous
    for encoder in (encode_ply, encode_splat, encode_spz):
        assert encoder(odd) == encoder(scene), encoder.__name__
    assert encode_ply(odd, vertex_only=True) == encode_ply(scene, vertex_only=True)
    assert encode_json(odd, {}) == encode_json(scene, {})
    assert encode_json(odd, {}, encoding="base64") == encode_json(scene, {}, encoding="base64")
