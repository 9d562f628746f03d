"""The ``sequence`` output: a clip as one ``.sogv`` file (`app.formats.sequence`), with the tiny network on a
clip of the conformance photo panning (camera motion). One file under a quarter of the frames' SOGs, each
frame rendering within 35 dB PSNR of its float32 PLY's render; `predict --format sequence` and `render
--frame`; a photo gives one frame; bad files and frame numbers are one clear error."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from app import pipeline
from app.errors import InvalidRequestError
from app.formats import read_ply
from app.formats.sequence import HEADER, MAGIC, SequenceError, SequenceReader
from app.gaussians import GaussianScene
from app.predictor import SharpPredictor
from app.render.camera import input_camera
from app.render.renderer import render
from app.sequence import run_sequence
from app.video import VideoLimits
from tests.conformance import PHOTO
from tests.helpers import make_clip

REPO = Path(__file__).resolve().parents[2]
LIMITS = VideoLimits(max_duration_s=60.0, max_frames=20, max_pixels=1920 * 1080)
FRAMES = 6


@pytest.fixture(scope="module")
def clip_files(predictor: SharpPredictor) -> tuple[dict, dict[str, bytes]]:
    files: dict[str, bytes] = {}
    clip = make_clip(FRAMES, shift_px=4, size=(320, 192))
    manifest = run_sequence(predictor, clip, {"sequence": {}, "ply": {}, "sog": {}}, sink=files.__setitem__,
                            limits=LIMITS, preview=False)
    return manifest, files


def picture(scene: GaussianScene) -> np.ndarray:
    return render(scene, input_camera(scene)).color.clamp(0, 1).numpy().astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-20)))


def test_a_clip_is_one_file_under_a_quarter_of_its_sogs_and_each_frame_renders_within_35_db(clip_files) -> None:
    manifest, files = clip_files
    assert manifest["sequence"] == "sequence.sogv" and manifest["num_frames"] == FRAMES
    assert all("sequence" not in record["files"] and record["timings_ms"]["sequence"] > 0
               for record in manifest["frames"])
    body = files["sequence.sogv"]
    sogs = sum(len(files[f"frames/{k:06d}.sog"]) for k in range(FRAMES))
    assert len(body) < 0.25 * sogs, (len(body), sogs)
    reader = SequenceReader(body)
    assert reader.num_frames == FRAMES and reader.manifest["fps"] == 10.0
    pictures = []
    for k in range(FRAMES):
        want = read_ply(files[f"frames/{k:06d}.ply"])
        got = reader.frame(k)
        assert got.num_gaussians == want.num_gaussians == 131_072
        assert (got.f_px, got.image_width, got.image_height) == pytest.approx((want.f_px, 320, 192))
        pictures.append(picture(got))
        assert psnr(pictures[-1], picture(want)) >= 35.0, k
    assert psnr(pictures[0], pictures[-1]) < 30.0  # the camera moved: the frames are not one scene repeated


def test_bad_files_and_frames_are_one_clear_error(clip_files) -> None:
    body = clip_files[1]["sequence.sogv"]
    reader = SequenceReader(body)
    for index in (-1, FRAMES):
        with pytest.raises(SequenceError, match=f"frame {index} is not in this sequence"):
            reader.frame(index)
    cases = {
        body[:10]: "shorter than its 16-byte header",
        b"PK\x03\x04" + body[4:]: "not a .sogv file",
        body[:HEADER.size + 40]: "truncated .sogv file: its manifest claims",
        body[:len(body) // 2]: "truncated .sogv file: stream",
        HEADER.pack(MAGIC, 9, 2) + b"{}": "version 9 is not supported",
        HEADER.pack(MAGIC, 1, 2) + b"{}": "bad .sogv manifest",
        HEADER.pack(MAGIC, 1, 3) + b"{x}": "bad .sogv manifest",
    }
    for data, message in cases.items():
        with pytest.raises(SequenceError, match=message):
            SequenceReader(data)
    length = struct.unpack_from("<I", body, 12)[0]
    noise = body[:HEADER.size + length] + bytes(len(body) - HEADER.size - length)  # packets zeroed
    with pytest.raises(SequenceError, match="does not decode"):
        SequenceReader(noise).frame(2)
    manifest = orjson.loads(body[HEADER.size:HEADER.size + length])
    for change, message in (({"grid": {"layers": 2, "side": 64}}, "decodes to 256x512 yuv444p10le, not the "
                                                                   "manifest's 64x128"),
                            ({"grid": {"side": 256}}, "bad .sogv manifest"),
                            ({"codec": "h264"}, "bad .sogv manifest"),
                            ({"codec": {"name": "hevc", "pix_fmt": "yuv444p10le"}}, "codec 'hevc' is not supported"),
                            ({"grid": {"layers": 2, "side": 10**5}}, "claims 20,000,000,000 Gaussians")):
        claimed = orjson.dumps({**manifest, **change})
        data = HEADER.pack(MAGIC, 1, len(claimed)) + claimed + body[HEADER.size + length:]
        with pytest.raises(ValueError, match=message):  # SequenceError, or SceneTooLargeError for the count
            SequenceReader(data).frame(0)


def test_a_photo_is_a_one_frame_sequence_and_a_budget_is_refused(predictor: SharpPredictor) -> None:
    result = pipeline.run(predictor, PHOTO, {"sequence": {}, "ply": {}})
    assert result.outputs["sequence"].filename == "coffee.sogv"
    reader = SequenceReader(result.outputs["sequence"].body)
    assert reader.num_frames == 1
    assert psnr(picture(reader.frame(0)), picture(read_ply(result.outputs["ply"].body))) >= 35.0
    with pytest.raises(InvalidRequestError, match="sequence output"):
        pipeline.run(predictor, PHOTO, {"sequence": {}}, max_gaussians=1000)
    with pytest.raises(InvalidRequestError, match="without max_gaussians"):
        run_sequence(predictor, make_clip(2), {"sequence": {}}, sink=lambda path, body: None, limits=LIMITS,
                     max_gaussians=1000)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_predict_format_sequence_writes_one_file_and_render_draws_its_frames(tmp_path: Path) -> None:
    clip = tmp_path / "pan.mp4"
    clip.write_bytes(make_clip(3, shift_px=4, size=(320, 192)))
    out = tmp_path / "out"
    run = run_cli("predict", "-i", str(clip), "-o", str(out), "--preset", "tiny", "--device", "cpu",
                  "--format", "sequence", "--fps", "all")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "sequence.sogv"]
    assert str(out / "sequence.sogv") in run.stdout
    assert orjson.loads((out / "manifest.json").read_bytes())["sequence"] == "sequence.sogv"
    reader = SequenceReader((out / "sequence.sogv").read_bytes())
    for k in (0, 2):
        png = tmp_path / f"frame{k}.png"
        run = run_cli("render", str(out / "sequence.sogv"), "--frame", str(k), "-o", str(png))
        assert run.returncode == 0, run.stderr
        drawn = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 255
        assert drawn.shape == (192, 320, 3)
        assert psnr(drawn, picture(reader.frame(k))) >= 40.0  # the PNG's 8 bits
    truncated = tmp_path / "cut.sogv"
    truncated.write_bytes((out / "sequence.sogv").read_bytes()[:5000])
    for args, message in (((str(out / "sequence.sogv"), "--frame", "3"), "frame 3 is not in this sequence"),
                          ((str(truncated),), "truncated .sogv file")):
        run = run_cli("render", *args, "-o", str(tmp_path / "x.png"))
        assert run.returncode == 2 and run.stderr.count("error:") == 1 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
