"""Hostile scene files and oversized renders, through the CLI (`python -m app render`) and `load_scene`: each is
refused with one ``error:`` line and exit status 2, before anything is allocated for what the file claims.

The files are built in `tests/http/hostile_inputs.py` (the battery's builders). Bombs here decompress to at most
a few hundred MB if a reader let them, so a regression fails (wrong error, or a slow success) without taking
the machine down; `bench/memory.py` measures the full-size ones.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.render import RenderError, load_scene
from tests.http import hostile_inputs as h

REPO = Path(__file__).resolve().parents[2]

HOSTILE_SCENES: list[tuple[str, Callable[[], bytes], str, str, str]] = [
    # (id, builder, file name, RenderError code, words the message must hold)
    ("spz-gzip-bomb-claims-4e9-points", lambda: h.spz_bomb(0xFFFF_FFFF, 64 << 20), "bomb.spz", "too_large",
     "4,294,967,295 Gaussians"),
    ("spz-gzip-bomb-8m-points-of-zeros", lambda: h.spz_bomb(8_000_000, 160_000_000), "bomb.spz", "too_large",
     "decompression bomb"),
    ("spz-gzip-bomb-after-1000-points", lambda: h.spz_bomb(1000, 64 << 20), "bomb.spz", "not_a_splat",
     "more than the 20,016 bytes"),
    ("spz-truncated", h.spz_truncated, "cut.spz", "not_a_splat", "truncated"),
    ("spz-bad-crc", lambda: h.spz_bomb(10, 200)[:-8] + b"\x00" * 8, "crc.spz", "not_a_splat", "SPZ"),
    ("ply-list-claims-60m", h.ply_list_bomb, "list.ply", "not_a_splat", "60,000,000 'vertex' rows"),
    ("ply-list-claims-2e9", lambda: h.ply_list_bomb(2_000_000_000), "list.ply", "not_a_splat", "2,000,000,000"),
    ("ply-ascii-claims-2e9", h.ply_ascii_bomb, "text.ply", "not_a_splat", "2,000,000,000 'vertex' rows"),
    ("ply-binary-claims-2e9", h.ply_binary_count_bomb, "big.ply", "not_a_splat", "2,000,000,000 'vertex' rows"),
    ("ply-faces-claim-4e9", h.ply_face_bomb, "mesh.ply", "not_a_splat", "4,000,000,000 'face' rows"),
    ("ply-negative-count", lambda: h.ply_header(-5) + h.ply_vertices(2), "neg.ply", "not_a_splat", "'-5'"),
    ("ply-count-not-decimal", lambda: h.ply_header("1e9") + h.ply_vertices(2), "exp.ply", "not_a_splat", "'1e9'"),
    ("ply-ascii-over-8mb", h.ply_ascii_large, "large.ply", "too_large", "convert it to a binary PLY"),
    ("ply-empty-element-claims-rows", lambda: h.ply_header(2, after=("element junk 999999999",))
     + h.ply_vertices(2), "junk.ply", "not_a_splat", "no properties"),
    ("ply-header-never-ends", lambda: b"ply\nformat ascii 1.0\n" + b"comment " + b"x" * 70_000, "long.ply",
     "not_a_splat", "end_header"),
    ("splat-not-records", lambda: b"\x00" * 33, "odd.splat", "not_a_splat", "multiple of 32"),
    ("sog-claims-over-the-cap", lambda: h.sog_bundle(10**12), "cap.sog", "too_large",
     "1,000,000,000,000 Gaussians"),
    ("sog-claims-more-than-its-bytes", lambda: h.sog_bundle(5_000_000), "claim.sog", "too_large",
     "decompression bomb"),
    ("sog-zip-bomb", h.sog_zip_bomb, "zip.sog", "too_large", "inflate to"),
    ("sog-image-larger-than-its-count", lambda: h.sog_bundle(16, image_size=(2048, 2048),
     extra={"noise.bin": np.random.default_rng(0).bytes(64)}), "wide.sog", "not_a_splat", "2048x2048"),
    ("sog-count-overflows", lambda: h.sog_bundle("1e999"), "inf.sog", "not_a_splat", "OverflowError"),
    ("sog-negative-count", lambda: h.sog_bundle(-3), "neg.sog", "not_a_splat", "count must be >= 0"),
    # issue 28: meta.json bounded before it is parsed, its types checked, WebP members only, no zip surprises
    ("sog-meta-json-2mb", lambda: h.sog_bundle(16, meta=h.sog_meta(16) + " " * (2 << 20)), "meta.sog", "too_large",
     "meta.json is 2,099,"),
    ("sog-meta-json-1.2gb-deflated", lambda: h.sog_bundle(16, meta=h.sog_meta(16) + " " * (1200 << 20),
     compression=zipfile.ZIP_DEFLATED), "meta.sog", "too_large", "inflate to 1,258,"),
    ("sog-meta-json-nested", lambda: h.sog_bundle(16, meta="[" * 400_000 + "]" * 400_000), "deep.sog", "not_a_splat",
     "nests too deep"),
    ("sog-meta-json-not-json", lambda: h.sog_bundle(16, meta="version: 2"), "yaml.sog", "not_a_splat", "meta.json"),
    ("sog-count-a-string", lambda: h.sog_bundle('"16"'), "str.sog", "not_a_splat", "count must be a number"),
    ("sog-count-a-list", lambda: h.sog_bundle("[16]"), "list.sog", "not_a_splat", "count must be a number"),
    ("sog-means-a-string", lambda: h.sog_bundle(16, meta='{"version": 2, "count": 16, "means": "x"}'), "means.sog",
     "not_a_splat", "bad SOG bundle"),
    ("sog-codebook-of-strings", lambda: h.sog_bundle(16, meta=h.sog_meta(16).replace(
        '"codebook": [0.0', '"codebook": ["a"', 1)), "book.sog", "not_a_splat", "could not convert"),
    ("sog-codebook-short", lambda: h.sog_bundle(16, meta=h.sog_meta(16).replace("0.0, ", "", 10)), "book.sog",
     "not_a_splat", "256 numbers"),
    ("sog-file-name-a-number", lambda: h.sog_bundle(16, meta=h.sog_meta(16).replace('"quats.webp"', "7")),
     "name.sog", "not_a_splat", "not a .webp member"),
    ("sog-eps-as-webp", lambda: h.sog_bundle(16, extra={"means_l.webp": h.EPS}), "eps.sog", "not_a_splat",
     "not a WebP image"),
    ("sog-png-as-webp", lambda: h.sog_bundle(16, extra={"means_l.webp": h.save(h.gradient(4, 4), "PNG")}),
     "png.sog", "not_a_splat", "not a WebP image"),
    ("sog-eps-member-named", lambda: h.sog_bundle(16, meta=h.sog_meta(16).replace('"sh0.webp"', '"sh0.eps"'),
     extra={"sh0.eps": h.EPS}), "eps.sog", "not_a_splat", "'sh0.eps' is not a .webp member"),
    ("sog-webp-16383px", lambda: h.sog_bundle(16, extra={"means_l.webp": h.webp_vp8l_bomb()}), "wide.sog",
     "too_large", "268435456 pixels"),
    ("sog-encrypted", lambda: h.sog_flagged(flag_bits=1), "secret.sog", "not_a_splat", "encrypted"),
    ("sog-aes-method", lambda: h.sog_flagged(method=99), "aes.sog", "not_a_splat", "compression method"),
    ("sog-claims-4m-in-8mb", lambda: h.sog_bundle(4_000_000, extra={"pad.bin": np.random.default_rng(1).bytes(
        8_000_000)}), "many.sog", "too_large", "at least 8 bytes each"),
    ("spz-claims-3m-in-7.5mb", lambda: h.spz_bomb(3_000_000, 60_000_000) + np.random.default_rng(2).bytes(
        7_500_000), "many.spz", "too_large", "more than 3x"),
]


@pytest.mark.parametrize(("builder", "name", "code", "words"), [case[1:] for case in HOSTILE_SCENES],
                         ids=[case[0] for case in HOSTILE_SCENES])
def test_hostile_scene_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       builder: Callable[[], bytes], name: str, code: str, words: str) -> None:
    data = builder()
    assert len(data) < 10_000_000
    with pytest.raises(RenderError) as error:
        load_scene(data, name=name)
    assert error.value.code == code and words in error.value.message, error.value.message
    scene = tmp_path / name
    scene.write_bytes(data)
    assert main(["render", str(scene), "-o", str(tmp_path / "out.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("f_px", ["1e-300", "0.5", "1e300", "nan", "-inf"])
def test_an_absurd_focal_length_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   f_px: str) -> None:
    """--f-px 1e-300 overflowed the projection (a traceback); the range is a prediction's, [1, 10^6] px."""
    scene = tmp_path / "s.ply"
    scene.write_bytes(h.ply_header(5) + h.ply_vertices(5))
    assert main(["render", str(scene), "-o", str(tmp_path / "out.png"), f"--f-px={f_px}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: f_px must be a number of pixels in [1, 1e+06]"), lines


def test_gzip_bomb_in_a_subprocess_is_one_error_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.spz"
    bomb.write_bytes(h.spz_bomb(0xFFFF_FFFF, 256 << 20))
    result = run_cli(str(bomb), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr


def test_huge_values_give_one_error_line_and_no_numpy_warning(tmp_path: Path) -> None:
    """f_dc 1e30 overflows sRGB -> linear: the colours are refused as non-finite, with no RuntimeWarning."""
    rows = np.frombuffer(h.ply_vertices(4), dtype="<f4").reshape(4, -1).copy()
    rows[:, 3:6] = 1e30
    rows[:, 7:10] = 100.0  # exp(100) overflows float32 too
    scene = tmp_path / "huge.ply"
    scene.write_bytes(h.ply_header(4) + rows.tobytes())
    result = run_cli(str(scene), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "NaN or infinite" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------- odd but readable


def test_mesh_ply_reads_its_vertices_and_skips_the_faces() -> None:
    data = h.ply_header(10, after=("element face 2", "property list uchar int vertex_indices")) + \
        h.ply_vertices(10) + (b"\x03" + np.array([0, 1, 2], "<i4").tobytes()) * 2
    assert load_scene(data, name="mesh.ply").num_gaussians == 10


def test_small_ascii_and_list_plys_are_still_read() -> None:
    line = b"0.125 -0.25 2.5 0.1 0.2 0.3 2.25 -3.5 -3.5 -3.5 1 0 0 0\n"
    assert load_scene(h.ply_header(3, fmt="ascii") + line * 3, name="text.ply").num_gaussians == 3
    with_list = h.ply_header(2, extra=("property list uchar int neighbours",))
    rows = np.frombuffer(h.ply_vertices(2), "<f4").reshape(2, -1)
    body = b"".join(row.tobytes() + b"\x01" + np.array([7], "<i4").tobytes() for row in rows)
    assert load_scene(with_list + body, name="list.ply").num_gaussians == 2


def test_spz_of_two_gzip_members_is_read() -> None:
    """A .spz whose gzip stream is split into two members (a concatenating writer) decodes like one."""
    import gzip

    from app.formats.spz import spz_payload

    scene = load_scene(h.ply_header(5) + h.ply_vertices(5), name="five.ply")
    payload = spz_payload(scene).tobytes()
    two_members = gzip.compress(payload[:50], mtime=0) + gzip.compress(payload[50:], mtime=0)
    assert load_scene(two_members, name="two.spz").num_gaussians == 5


# ------------------------------------------------------------------------------------------- videos


def red_scene():
    rows = np.frombuffer(h.ply_vertices(50), "<f4").reshape(50, -1).copy()
    rows[:, 0] = np.linspace(-0.5, 0.5, 50)
    rows[:, 3] = 1.5  # red
    return load_scene(h.ply_header(50) + rows.tobytes(), name="red.ply", size=(64, 48))


def test_gif_is_written_frame_by_frame() -> None:
    """The header leaves the encoder after one frame is pulled, each frame before the next is pulled."""
    from PIL import Image

    from app.render.video import iter_gif_chunks

    pulled = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal pulled
        for shade in (0, 80, 160, 240):
            pulled += 1
            yield np.full((30, 40, 3), (shade, 255 - shade, 7), dtype=np.uint8)

    chunks = iter_gif_chunks(frames(), fps=10)
    pieces = []
    for chunk in chunks:
        pieces.append(chunk)
        assert pulled <= max(1, len(pieces) - 1)  # header after frame 1; frame i's data before frame i+1
    gif = Image.open(io.BytesIO(b"".join(pieces)))
    assert gif.n_frames == 4 and gif.info["loop"] == 0 and gif.info["duration"] == 100
    for index, shade in enumerate((0, 80, 160, 240)):
        gif.seek(index)
        assert gif.convert("RGB").getpixel((5, 5)) == (shade, 255 - shade, 7)


def test_video_work_is_bounded_before_rendering() -> None:
    from app.render.pictures import MAX_GIF_PIXELS, MAX_VIDEO_PIXELS, render_video, video_chunks

    scene = red_scene()
    for fmt, limit in (("mp4", MAX_VIDEO_PIXELS), ("gif", MAX_GIF_PIXELS)):
        frames = limit // (1024 * 768) + 1
        with pytest.raises(RenderError) as error:
            video_chunks(scene, fmt=fmt, size=(1024, 768), frames=frames)  # refused at the call, not when read
        assert error.value.code == "too_large" and f"at most {frames - 1} frames" in error.value.message
    assert MAX_GIF_PIXELS < MAX_VIDEO_PIXELS
    reported: list[tuple[int, int]] = []
    chunks = video_chunks(scene, fmt="gif", size=(64, 48), frames=5, progress=lambda *a: reported.append(a))
    assert not reported  # nothing is rendered until the file is read
    assert b"".join(chunks)[-1:] == b";" and reported == [(i, 5) for i in range(1, 6)]
    assert render_video(scene, fmt="mp4", size=(64, 48), frames=3)[4:8] == b"ftyp"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "render", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_cli_checks_the_output_folder_first_and_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = tmp_path / "scene.ply"
    scene.write_bytes(h.ply_header(1_000_000) + h.ply_vertices(2))  # unreadable: the folder must be found first
    target = tmp_path / "missing" / "orbit.mp4"
    assert main(["render", str(scene), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: the output folder {target.parent} does not exist (for {target})\n"


def test_cli_video_shows_progress_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    scene = tmp_path / "red.ply"
    scene.write_bytes(h.ply_header(50) + h.ply_vertices(50))
    assert main(["render", str(scene), "-o", str(tmp_path / "quiet.gif"), "--frames", "3", "--size", "32"]) == 0
    err = capsys.readouterr().err  # not a terminal (a log): plain lines, no bar
    assert "\r" not in err and err.splitlines()[-1].startswith("red.ply -> quiet.gif: frame 3/3")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["render", str(scene), "-o", str(tmp_path / "loop.gif"), "--frames", "3", "--size", "32"]) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "3/3 frames" in err and err.endswith("\n")


def test_compositing_in_bands_gives_the_same_image() -> None:
    """A frame over the pair budget is composited in bands of tile rows: same pixels, bounded bookkeeping."""
    from app.render import input_camera, prepare_scene
    from app.render.projection import project
    from app.render.rasterizer import _bands, rasterize

    rng = np.random.default_rng(4)
    rows = np.frombuffer(h.ply_vertices(300), "<f4").reshape(300, -1).copy()
    rows[:, 0:2] = rng.uniform(-0.6, 0.6, (300, 2))
    rows[:, 3:6] = rng.normal(0, 1, (300, 3))
    rows[:, 6] = rng.normal(0, 2, 300)
    rows[:, 7:10] = np.log(rng.uniform(0.01, 0.2, (300, 3)))
    scene = load_scene(h.ply_header(300) + rows.tobytes(), name="s.ply", size=(90, 70))
    projected = project(prepare_scene(scene), input_camera(scene))
    whole = rasterize(projected, (0.2, 0.3, 0.4))
    assert len(_bands(projected, 4, 1 << 30)) == 1 and len(_bands(projected, 4, 500)) > 3
    banded = rasterize(projected, (0.2, 0.3, 0.4), band_pairs=500)
    for name in ("color", "depth", "alpha"):
        np.testing.assert_allclose(getattr(banded, name).numpy(), getattr(whole, name).numpy(), atol=1e-5)
    assert float(whole.alpha.mean()) > 0.3


def test_a_tile_row_over_the_pair_budget_is_split_by_columns_into_the_same_image() -> None:
    """Issue 28: 262k Gaussians in one row of tiles (an 8.4 MB .splat) took 4.29 GB for one PNG, since bands of
    tile rows cannot split a row. A row over the budget is now composited in blocks of tile columns, and the
    passes take more list entries when few tiles have any left: same pixels."""
    from app.render import input_camera, prepare_scene
    from app.render.projection import project
    from app.render.rasterizer import _bands, _columns, rasterize

    scene = load_scene(h.splat_one_tile_row(300), name="row.splat", size=(96, 64))
    projected = project(prepare_scene(scene), input_camera(scene))
    rows = projected.boxes[:, 2:] // 4
    assert int(rows.min()) >= int(rows.max()) - 1  # every Gaussian in one or two rows of tiles
    assert len(_bands(projected, 4, 1000)) >= 2 and len(_columns(projected, 4, 1000)) > 3
    whole = rasterize(projected, (0.2, 0.3, 0.4))
    for band_pairs, pass_size in ((1000, 32), (300, 8), (1 << 30, 4)):
        split = rasterize(projected, (0.2, 0.3, 0.4), band_pairs=band_pairs, pass_size=pass_size)
        for name in ("color", "depth", "alpha"):
            np.testing.assert_allclose(getattr(split, name).numpy(), getattr(whole, name).numpy(), atol=1e-5)
    assert float(whole.alpha.max()) > 0.5

