"""`python -m app remote -i clip.mp4` against a real server on loopback (tiny model): one clip job, its
progress line by frame, its files downloaded as a folder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from app.formats import read_ply
from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, make_clip, tiny_settings

REPO = Path(__file__).resolve().parents[2]


def remote(clip: Path, out: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """`python -m app remote -i clip -o out --url url flags...`, its output captured."""
    return subprocess.run([sys.executable, "-m", "app", "remote", "-i", str(clip), "-o", str(out), "--url", url,
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=300)


def server_and_clip(serve: Callable[[Any], LiveServer], tmp_path: Path, frames: int) -> tuple[LiveServer, Path]:
    server = serve(create_app(tiny_settings(jobs_dir=tmp_path / "jobs"),
                              predictor=SharpPredictor.load("tiny", device="cpu")))
    clip = tmp_path / "walk.mp4"
    clip.write_bytes(make_clip(frames, fps=10))
    return server, clip


def test_remote_sends_a_clip_and_downloads_its_folder(serve: Callable[[Any], LiveServer], tmp_path: Path) -> None:
    server, clip = server_and_clip(serve, tmp_path, 3)
    out = tmp_path / "out"
    run = remote(clip, out, server.url, "--max-frames", "2", "--align", "scale", "--format", "ply",
                 "--fps", "all")
    assert run.returncode == 0, run.stderr
    assert "frame 1/2" in run.stderr and "frame 2/2" in run.stderr
    assert f"walk.mp4: 2 frames of 160x96 px, 131,072 Gaussians -> {out / 'walk'}" in run.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "walk/frames/000000.ply", "walk/frames/000001.ply", "walk/manifest.json", "walk/preview.mp4"]
    assert orjson.loads((out / "walk" / "manifest.json").read_bytes())["align"] == "scale"
    assert read_ply(out / "walk" / "frames" / "000001.ply").num_gaussians == 131_072
    photo_flags = subprocess.run([sys.executable, "-m", "app", "remote", "-i", str(tmp_path), "-o", str(out),
                                  "--url", server.url, "--fps", "2"], cwd=REPO, capture_output=True, text=True,
                                 timeout=120)
    assert photo_flags.returncode == 2 and "--fps only applies to a video input" in photo_flags.stderr


def test_remote_sends_a_clips_budget(serve: Callable[[Any], LiveServer], tmp_path: Path) -> None:
    server, clip = server_and_clip(serve, tmp_path, 2)
    out = tmp_path / "out"
    run = remote(clip, out, server.url, "--max-gaussians", "1000", "--format", "ply", "--fps", "all")
    assert run.returncode == 0, run.stderr
    assert f"walk.mp4: 2 frames of 160x96 px, 1,000 of 131,072 Gaussians -> {out / 'walk'}" in run.stdout
    manifest = orjson.loads((out / "walk" / "manifest.json").read_bytes())
    assert [(r["num_gaussians"], r["num_predicted"]) for r in manifest["frames"]] == [(1000, 131_072)] * 2
    assert read_ply(out / "walk" / "frames" / "000001.ply").num_gaussians == 1000
    too_many = remote(clip, out, server.url, "--max-gaussians", "131073")
    assert too_many.returncode == 2 and "error: --max-gaussians: max_gaussians must be a count from 1 to 131,072" \
        in too_many.stderr, too_many.stderr
