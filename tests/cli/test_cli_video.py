"""`python -m app predict -i clip.mp4` end to end with the tiny preset: a clip made here in, the frames'
files, the manifest and the preview out; bad clips and options are one `error:` line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from PIL import Image

from app.formats import decode_spz, read_ply
from tests.helpers import make_clip

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_clip_becomes_a_folder_of_frames(tmp_path: Path) -> None:
    clip = tmp_path / "walk.bin"  # recognised by its content, whatever its name
    clip.write_bytes(make_clip(3, fps=10))
    out = tmp_path / "out"
    run = run_cli("predict", "-i", str(clip), "-o", str(out), "--preset", "tiny", "--device", "cpu",
                  "--max-frames", "2", "--align", "scale", "--start", "0.1", "--fps", "all", "--preview")
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("[frame")]
    assert len(lines) == 2 and lines[0].startswith("[frame 1/2, ") and lines[1].startswith("[frame 2/2, ")
    assert "t=0.100s" in lines[0] and "t=0.200s" in lines[1] and "elapsed" in lines[0] and " left]" in lines[0]
    assert "131,072 Gaussians -> frames/000000.ply" in run.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "frames/000000.ply", "frames/000001.ply", "manifest.json", "preview.mp4"]
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["num_frames"] == 2 and manifest["align"] == "scale"
    assert manifest["sampling"] == {"fps": None, "start": 0.1, "end": None, "max_frames": 2}
    scene = read_ply(out / "frames" / "000001.ply")
    assert scene.num_gaussians == 131_072 and manifest["frames"][1]["f_px"] == pytest.approx(scene.f_px)  # PLY: float32


def test_bad_clips_and_options_are_one_error_line(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(make_clip(3)[:500])
    run = run_cli("predict", "-i", str(broken), "-o", out, "--preset", "tiny")
    assert run.returncode == 2 and "error:" in run.stderr and "truncated or corrupt" in run.stderr
    assert "Traceback" not in run.stderr
    text = tmp_path / "notes.mov"
    text.write_text("not a clip")
    run = run_cli("predict", "-i", str(text), "-o", out, "--preset", "tiny")
    assert run.returncode == 2 and "not a video" in run.stderr and "Traceback" not in run.stderr
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip(2))
    for flags, message in ((["--fps", "0"], "fps must be"), (["--start", "99"], "past the clip's end"),
                           (["--start", "0.5", "--end", "0.1"], "end must be")):
        run = run_cli("predict", "-i", str(clip), "-o", out, "--preset", "tiny", *flags)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30)).save(photo)
    run = run_cli("predict", "-i", str(photo), "-o", out, "--preset", "tiny", "--fps", "2")
    assert run.returncode == 2 and "--fps only applies to a video input" in run.stderr


def test_a_clip_is_taken_at_one_frame_a_second_by_default_and_without_a_preview_on_a_cpu(tmp_path: Path) -> None:
    """The default frame rate lets the longest clip allowed (120 s) fit the frame limit (120); the preview,
    which costs more than the tiny forward pass on a CPU, is made only when asked for there."""
    clip = tmp_path / "walk.mp4"
    clip.write_bytes(make_clip(25, fps=10))  # 2.5 s
    out = tmp_path / "out"
    run = run_cli("predict", "-i", str(clip), "-o", str(out), "--preset", "tiny", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["sampling"]["fps"] == 1.0 and manifest["preview"] is None
    assert [frame["time_s"] for frame in manifest["frames"]] == pytest.approx([0.0, 1.0, 2.0])
    assert "[frame 3/3, " in run.stdout and not (out / "preview.mp4").exists()


def test_a_clip_with_a_budget_keeps_exactly_it_in_every_frame(tmp_path: Path) -> None:
    clip = tmp_path / "walk.mp4"
    clip.write_bytes(make_clip(2, fps=10))
    out = tmp_path / "out"
    run = run_cli("predict", "-i", str(clip), "-o", str(out), "--preset", "tiny", "--device", "cpu",
                  "--max-gaussians", "0.25", "--format", "spz", "--fps", "all")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("32,768 of 131,072 Gaussians -> frames/") == 2
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert [(r["num_gaussians"], r["num_predicted"]) for r in manifest["frames"]] == [(32_768, 131_072)] * 2
    assert all(decode_spz((out / "frames" / f"00000{k}.spz").read_bytes()).num_gaussians == 32_768 for k in (0, 1))


def test_a_clip_with_a_budget_the_model_cannot_keep_is_one_error_line(tmp_path: Path) -> None:
    clip = tmp_path / "walk.mp4"
    clip.write_bytes(make_clip(2, fps=10))
    out = tmp_path / "out"
    run = run_cli("predict", "-i", str(clip), "-o", str(out), "--preset", "tiny", "--device", "cpu",
                  "--max-gaussians", "131073")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "error: --max-gaussians: max_gaussians must be a count from 1 to 131,072" in run.stderr
    assert not out.exists() and "[frame" not in run.stdout  # a refused run leaves no folder


def test_clips_that_lie_are_one_error_line(tmp_path: Path) -> None:
    """Issue 28: a frame far larger than the header's (the CLI reached 3 GB, then a traceback), an unknown codec,
    a frame of another shape, absurd sampling: each one `error:` line, exit 2."""
    from tests.http import hostile_inputs as h

    out = str(tmp_path / "out")
    cases = [
        (h.mjpeg_clip([(16, 16), (16_000, 16_000)]), [], "SHARP_VIDEO_MAX_PIXELS"),
        (h.clip_unknown_codec(), [], "codec is unknown"),
        (h.mjpeg_clip([(16, 16), (32, 16)]), [], "another shape"),
        (make_clip(2), ["--max-frames", str(10**20)], "max_frames must be"),
        (make_clip(2), ["--start", "1e300"], "start must be"),
    ]
    for index, (data, flags, message) in enumerate(cases):
        clip = tmp_path / f"clip{index}.avi"
        clip.write_bytes(data)
        run = run_cli("predict", "-i", str(clip), "-o", out, "--preset", "tiny", "--fps", "all", *flags)
        lines = [line for line in run.stderr.strip().splitlines() if not line.startswith("warning: synthetic")]
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (message, run.stderr)
        assert message in lines[0], (message, run.stderr)
