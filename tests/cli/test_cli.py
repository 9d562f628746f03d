"""`python -m app predict` end to end with the tiny preset: real files in, parsed files out."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from app.formats import decode_spz, read_ply

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_predict_directory_writes_one_file_per_image(tmp_path: Path, conformance_dir: Path) -> None:
    inputs = tmp_path / "photos"
    (inputs / "nested").mkdir(parents=True)
    shutil.copy(conformance_dir / "coffee.png", inputs / "coffee.png")
    Image.fromarray(np.full((90, 120, 3), 200, dtype=np.uint8)).save(inputs / "nested" / "wall.JPG")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    run = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "--preset", "tiny", "--device", "cpu")

    assert run.returncode == 1, run.stderr  # one unreadable image
    assert "preset=tiny weights=synthetic" in run.stdout
    assert "NOT a real SHARP prediction" in run.stderr
    assert "broken.jpg: skipped:" in run.stderr
    assert "[2/3] coffee.png: 600x400 px, f_px=500.0 (default), 131,072 Gaussians" in run.stdout
    assert "120x90 px" in run.stdout
    coffee = read_ply(tmp_path / "out" / "coffee.ply")
    assert coffee.num_gaussians == 131_072 and (coffee.image_width, coffee.image_height) == (600, 400)
    assert read_ply(tmp_path / "out" / "wall.ply").num_gaussians == 131_072
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coffee.ply", "wall.ply"]


def test_predict_single_image_as_spz_with_focal_override(tmp_path: Path, conformance_dir: Path) -> None:
    run = run_cli("predict", "-i", str(conformance_dir / "coffee.png"), "-o", str(tmp_path), "--preset", "tiny",
                  "--format", "spz", "--f-px", "1234.5")
    assert run.returncode == 0, run.stderr
    assert "f_px=1234.5 (request)" in run.stdout
    scene = decode_spz((tmp_path / "coffee.spz").read_bytes())
    assert scene.num_gaussians == 131_072


def test_bad_arguments_are_clear_messages(tmp_path: Path) -> None:
    missing = run_cli("predict", "-i", str(tmp_path / "nope.jpg"), "-o", str(tmp_path), "--preset", "tiny")
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    bad_focal = run_cli("predict", "-i", str(tmp_path), "-o", str(tmp_path), "--preset", "tiny", "--f-px", "-3")
    assert bad_focal.returncode == 2 and "f_px must be a number of pixels in [1, 1e+06]" in bad_focal.stderr
    huge_focal = run_cli("predict", "-i", str(tmp_path), "-o", str(tmp_path), "--preset", "tiny", "--f-px", "1e20")
    assert huge_focal.returncode == 2 and "got 1e+20" in huge_focal.stderr
    bad_format = run_cli("predict", "-i", str(tmp_path), "-o", str(tmp_path), "--preset", "tiny", "--format", "obj")
    assert bad_format.returncode == 2 and "invalid choice: 'obj'" in bad_format.stderr
    useless = run_cli("predict", "-i", str(tmp_path), "-o", str(tmp_path), "--preset", "tiny", "--format", "splat",
                      "--vertex-only")
    assert useless.returncode == 2 and "--vertex-only does nothing for --format splat" in useless.stderr
    empty = run_cli("predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--preset", "tiny")
    assert empty.returncode == 2 and "no supported images" in empty.stderr
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a directory")
    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photo)
    onto_file = run_cli("predict", "-i", str(photo), "-o", str(a_file), "--preset", "tiny")
    assert onto_file.returncode == 2 and "is a file" in onto_file.stderr and "Traceback" not in onto_file.stderr
    bad_env = subprocess.run(
        [sys.executable, "-m", "app", "predict", "-i", str(photo), "-o", str(tmp_path / "o2"), "--preset", "tiny"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHARP_DTYPE": "float8", "SHARP_MAX_QUEUE": "-1"},
    )
    assert bad_env.returncode == 2 and "Traceback" not in bad_env.stderr, bad_env.stderr
    assert "SHARP_DTYPE" in bad_env.stderr and "SHARP_MAX_QUEUE" in bad_env.stderr
    offline = subprocess.run(
        [sys.executable, "-m", "app", "predict", "-i", str(tmp_path), "-o", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SHARP_OFFLINE": "1", "SHARP_CACHE_DIR": str(tmp_path / "cache"),
             "HOME": str(tmp_path)},
    )
    assert offline.returncode == 2


def test_every_usage_error_is_one_line(tmp_path: Path) -> None:
    """argparse's own errors too: one `error:` line naming the command's --help, exit 2, no usage block."""
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30)).save(photo)
    cases = [
        ["predict", "-i", str(photo), "-o", str(tmp_path / "o"), "--max-gaussians", "1.5"],
        ["predict", "-i", str(photo)],  # no -o
        ["predict", "-i", str(photo), "-o", str(tmp_path / "o"), "--fps", "fast"],
        ["render", str(photo)],
        ["remote", "-i", str(photo), "-o", str(tmp_path / "o")],  # no --url
        ["serve", "--port", "eighty"],
        ["nonsense"],
        [],
    ]
    for args in cases:
        run = run_cli(*args)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, run.stderr)
        assert "--help" in lines[0] and run.stdout == ""
    assert not (tmp_path / "o").exists()


def test_a_refused_or_failed_run_leaves_no_output_folder(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (90, 120, 200)).save(photo)
    out = tmp_path / "new" / "out"
    refused = run_cli("predict", "-i", str(photo), "-o", str(out), "--preset", "tiny", "--max-gaussians", "131073")
    assert refused.returncode == 2 and "error: --max-gaussians:" in refused.stderr
    assert not (tmp_path / "new").exists()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    failed = run_cli("predict", "-i", str(broken), "-o", str(out), "--preset", "tiny")
    assert failed.returncode == 1 and "skipped" in failed.stderr and not (tmp_path / "new").exists()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    unreachable = run_cli("remote", "-i", str(photo), "-o", str(out), "--url", url)
    assert unreachable.returncode == 1 and "error: cannot reach" in unreachable.stderr
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    run_cli("predict", "-i", str(broken), "-o", str(kept), "--preset", "tiny")
    assert kept.is_dir()  # a folder that was there before is never removed


def test_ctrl_c_is_one_line_and_status_130(tmp_path: Path) -> None:
    from tests.helpers import make_clip

    clip = tmp_path / "long.mp4"
    clip.write_bytes(make_clip(40, fps=10))
    process = subprocess.Popen([sys.executable, "-m", "app", "predict", "-i", str(clip), "-o", str(tmp_path / "out"),
                                "--preset", "tiny", "--device", "cpu", "--fps", "all"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        while first and not first.startswith("[frame"):  # wait until a frame is done
            first = process.stdout.readline()
        assert first.startswith("[frame 1/40, "), first
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert [line for line in stderr.splitlines() if "interrupted" in line or "error" in line] == \
        [stderr.strip().splitlines()[-1]]
    assert (tmp_path / "out" / "frames" / "000000.ply").is_file()  # complete frames stay


def test_a_video_render_to_a_log_prints_plain_progress_lines(tmp_path: Path) -> None:
    from app.formats.ply import encode_ply
    from tests.helpers import random_scene

    scene = tmp_path / "scene.ply"
    scene.write_bytes(encode_ply(random_scene(500)))
    run = subprocess.run([sys.executable, "-m", "app", "render", str(scene), "-o", str(tmp_path / "orbit.mp4"),
                          "--path", "orbit", "--frames", "20", "--size", "64", "--device", "cpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "scene.ply -> orbit.mp4: frame " in line]
    assert "\r" not in run.stderr and len(lines) == 10, run.stderr  # one at every tenth of the frames
    assert lines[0].endswith(("left",)) and "2/20, " in lines[0] and "20/20, " in lines[-1]
