"""`--max-gaussians` on the command line: `predict`, `remote` and `render` keep exactly the budget (files parsed
back), say both counts in their summary line, make the same bytes as `POST /predict/sog` with the same budget,
and refuse a bad budget with one `error:` line and exit status 2, naming the accepted range."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.formats import decode_spz, read_ply
from app.formats.sog_reader import decode_sog
from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, digest, tiny_settings

REPO = Path(__file__).resolve().parents[2]
PREDICTED = 131_072
ACCEPTED = "a count from 1 to the number predicted, or a fraction in (0, 1]"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "garden.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_remote_and_http_keep_the_same_budget_in_sog(tmp_path: Path, photo: Path,
                                                              serve: Callable[..., LiveServer],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # `predict` runs in this process, beside the server: it saves a second interpreter's start (processes
    # agree to the bit since `app.devices.prepare_cpu_maths`; tests/predictor/test_determinism.py).
    local = tmp_path / "local"
    assert main(["predict", "-i", str(photo), "-o", str(local), "--preset", "tiny", "--device", "cpu",
                 "--format", "sog", "--max-gaussians", "0.25"]) == 0
    assert f"{PREDICTED // 4:,} of {PREDICTED:,} Gaussians -> " in capsys.readouterr().out
    assert decode_sog((local / "garden.sog").read_bytes()).num_gaussians == PREDICTED // 4

    settings = tiny_settings(jobs_dir=tmp_path / "jobs", cache_dir=tmp_path / "cache")
    server = serve(create_app(settings, predictor=SharpPredictor.load("tiny", device="cpu")))
    with server.client(timeout=120) as client:
        response = client.post("/predict/sog", files={"file": (photo.name, photo.read_bytes(), "image/png")},
                               data={"max_gaussians": "0.25"})
    assert response.status_code == 200, response.text
    assert digest((local / "garden.sog").read_bytes()) == digest(response.content)

    remote = tmp_path / "remote"
    run = cli("remote", "-i", str(photo), "-o", str(remote), "--url", server.url, "--format", "sog,spz",
              "--max-gaussians", "1000")
    assert run.returncode == 0, run.stderr
    assert f"1,000 of {PREDICTED:,} Gaussians -> " in run.stdout
    assert decode_sog((remote / "garden.sog").read_bytes()).num_gaussians == 1000
    assert decode_spz((remote / "garden.spz").read_bytes()).num_gaussians == 1000

    above = cli("remote", "-i", str(photo), "-o", str(remote), "--url", server.url, "--max-gaussians",
                str(PREDICTED + 1))
    assert above.returncode == 2 and "Traceback" not in above.stderr, above.stderr
    assert f"error: --max-gaussians: max_gaussians must be a count from 1 to {PREDICTED:,}" in above.stderr


def test_predict_with_a_preview_and_render_keep_the_budget(tmp_path: Path, photo: Path) -> None:
    run = cli("predict", "-i", str(photo), "-o", str(tmp_path), "--preset", "tiny", "--device", "cpu",
              "--max-gaussians", "5000", "--preview")
    assert run.returncode == 0, run.stderr
    assert f"5,000 of {PREDICTED:,} Gaussians" in run.stdout and "budget=" in run.stdout
    scene = read_ply(tmp_path / "garden.ply")
    assert scene.num_gaussians == 5000 and (tmp_path / "garden.png").is_file()

    rendered = cli("render", str(tmp_path / "garden.ply"), "-o", str(tmp_path / "few.png"), "--max-gaussians", "0.1",
                   "--device", "cpu")
    assert rendered.returncode == 0, rendered.stderr
    assert "500 of 5,000 Gaussians" in rendered.stdout
    too_many = cli("render", str(tmp_path / "garden.ply"), "-o", str(tmp_path / "x.png"), "--max-gaussians", "5001")
    assert too_many.returncode == 2 and "error: --max-gaussians: max_gaussians must be a count from 1 to 5,000" \
        in too_many.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1.5", "1e3", "many", "25%"])
@pytest.mark.parametrize("command", ["predict", "remote", "render"])
def test_a_bad_budget_is_one_error_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   command: str, value: str) -> None:
    args = {"predict": ["predict", "-i", str(tmp_path), "-o", str(tmp_path), "--preset", "tiny"],
            "remote": ["remote", "-i", str(tmp_path), "-o", str(tmp_path), "--url", "http://127.0.0.1:9"],
            "render": ["render", str(tmp_path / "scene.ply"), "-o", str(tmp_path / "x.png")]}[command]
    with pytest.raises(SystemExit) as exit_status:
        main([*args, f"--max-gaussians={value}"])
    assert exit_status.value.code == 2
    stderr = capsys.readouterr().err
    assert "error: argument --max-gaussians:" in stderr and ACCEPTED in stderr and "Traceback" not in stderr


def test_predict_refuses_a_budget_above_the_models_count(tmp_path: Path, photo: Path) -> None:
    run = cli("predict", "-i", str(photo), "-o", str(tmp_path / "out"), "--preset", "tiny", "--device", "cpu",
              "--max-gaussians", str(PREDICTED + 1))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"error: --max-gaussians: max_gaussians must be a count from 1 to {PREDICTED:,}" in run.stderr
    assert not (tmp_path / "out" / "garden.ply").exists()
