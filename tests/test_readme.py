"""The README's commands, run as written, so that they cannot go stale.

Every ```bash block of README.md is preceded by a marker, `<!-- readme-test: NAME -->` or
`<!-- readme-test: skip (why) -->`; an unmarked block fails `test_every_bash_block_is_marked`. The quick
start's server is started the way `SHARP_PRESET=tiny make serve` starts it (`make -n serve` must say
`python -m app serve`), as a subprocess on a free loopback port; the blocks then run in bash in a temporary
directory holding a real JPEG named `photo.jpg`, with only the port and the venv's path substituted. What
they write is parsed back: PLYs with plyfile, SPZ with gsply (an independent reader), PNGs with Pillow, JSON
with the standard library. `make setup` itself is not run (CI has just run it): its targets must exist.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gsply
import httpx
import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from tests.helpers import free_port, stop_process, wait_ready

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"<!-- readme-test: (?P<name>[\w-]+|skip \([^)]+\)) -->\n```bash\n(?P<body>.*?)\n```", re.S)
BLOCKS: dict[str, str] = {m["name"]: m["body"] for m in BLOCK.finditer(README) if not m["name"].startswith("skip")}
README_URL = "http://127.0.0.1:8000"
VENV_BIN = ".venv/bin/"
FOCAL_35MM = 26  # the EXIF focal length of the test's photo.jpg, a phone's main camera
BLOCK_TIMEOUT_S = 300


def tiny_gaussians_claimed() -> int:
    """The number of Gaussians the README says the tiny preset returns."""
    match = re.search(r"holds\s+([\d,]+) meaningless Gaussians", README)
    assert match, "the README no longer says how many Gaussians the tiny preset returns"
    return int(match[1].replace(",", ""))


def commands(block: str) -> list[str]:
    """The block's command lines: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def write_photo(path: Path) -> None:
    """A real JPEG whose EXIF gives the focal length, as a phone's does."""
    y, x = np.mgrid[0:120, 0:160]
    pixels = np.stack([x * 255 // 159, y * 255 // 119, (x + y) % 64 * 4], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = FOCAL_35MM  # FocalLengthIn35mmFilm
    Image.fromarray(pixels).save(path, "JPEG", quality=90, exif=exif)


def python_env(**extra: str) -> dict[str, str]:
    """The environment the blocks run in: this checkout's `app` first, the venv's tools on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The quick start's `SHARP_PRESET=tiny make serve`, on a free loopback port."""
    line = next(c for c in commands(BLOCKS["setup"]) if c.split()[-1] == "serve")
    words = shlex.split(line)
    assignments = dict(w.split("=", 1) for w in words if "=" in w)
    assert words[len(assignments):] == ["make", "serve"], line
    # --no-print-directory: under `make test` the nested make would add "Entering directory" lines.
    recipe = subprocess.run(["make", "--no-print-directory", "-n", "serve"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    assert recipe.strip().splitlines()[-1].endswith("-m app serve"), recipe

    cache = tmp_path_factory.mktemp("cache")
    port = free_port()
    log = (cache / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env=python_env(**assignments, SHARP_PORT=str(port), SHARP_CACHE_DIR=str(cache)))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s=180, log=cache / "server.log")
        yield url
    finally:
        stop_process(process, timeout_s=30)
        log.close()


def run_block(name: str, workdir: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run README block `name` in bash (`-euo pipefail`) in `workdir`, next to a fresh photo.jpg."""
    script = BLOCKS[name].replace(VENV_BIN, f"{Path(sys.executable).parent}/")
    if url is not None:
        script = script.replace(README_URL, url)
    write_photo(workdir / "photo.jpg")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, capture_output=True, text=True,
                            env=python_env(), timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, f"README block {name!r} failed:\n{script}\n{result.stdout}\n{result.stderr}"
    for target in re.findall(r"-o (\S+)", BLOCKS[name]):
        assert (workdir / target).exists(), f"README block {name!r} did not write {target}"
    return result


def read_ply(path: Path) -> PlyData:
    ply = PlyData.read(str(path))
    assert ply["vertex"].count == tiny_gaussians_claimed()
    return ply


def test_every_bash_block_is_marked() -> None:
    assert README.count("```bash") == len(BLOCK.findall(README)), "a ```bash block without a readme-test marker"
    assert set(BLOCKS) == {"setup", "quickstart-curl", "real-model", "cli", "api", "jobs", "render"}


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("name", ["setup", "real-model"])
def test_make_targets_exist(name: str) -> None:
    """`make setup` and the real model's `make serve` are not run here (CI ran the one, the other downloads 2.8 GB),
    but every make target the blocks name must exist."""
    for line in commands(BLOCKS[name]):
        words = shlex.split(line)
        target = words[words.index("make") + 1:]
        dry_run = subprocess.run(["make", "--no-print-directory", "-n", *target], cwd=ROOT, capture_output=True,
                                 text=True)
        assert dry_run.returncode == 0, f"{line}: {dry_run.stderr}"


def test_quickstart_curl_returns_a_ply(server: str, tmp_path: Path) -> None:
    run_block("quickstart-curl", tmp_path, server)
    ply = read_ply(tmp_path / "photo.ply")
    assert {e.name for e in ply.elements} >= {"vertex", "intrinsic", "image_size"}
    assert [int(row[0]) for row in ply["image_size"].data] == [160, 120]


def test_cli_block_writes_its_files(tmp_path: Path) -> None:
    run_block("cli", tmp_path)
    read_ply(tmp_path / "out" / "photo.ply")
    with Image.open(tmp_path / "out" / "photo.png") as preview:
        assert preview.format == "PNG" and preview.width * 120 == preview.height * 160  # the photo's view
    size = int(re.search(r"render .* --size (\d+)", BLOCKS["cli"])[1])
    with Image.open(tmp_path / "view.png") as view:
        assert view.format == "PNG" and max(view.size) == size


def test_api_block(server: str, tmp_path: Path) -> None:
    result = run_block("api", tmp_path, server)
    assert json.loads(result.stdout.splitlines()[0])["status"] == "ready"
    scene = json.loads((tmp_path / "scene.json").read_text())
    kept = int(re.search(r"max_gaussians=(\d+)", BLOCKS["api"])[1])
    positions = np.frombuffer(base64.b64decode(scene["positions"]["data"]), "<f4")
    assert positions.reshape(scene["positions"]["shape"]).shape == (kept, 3)
    assert np.isfinite(positions).all()
    assert scene["metadata"]["f_px_source"] == "exif"  # the README: a phone photo's EXIF gives the focal length


def test_jobs_block_sets_and_uses_its_id(server: str, tmp_path: Path) -> None:
    assert re.search(r"^ID=\$\(", BLOCKS["jobs"], re.M), "the jobs example must set $ID before using it"
    result = run_block("jobs", tmp_path, server)
    events = [json.loads(line[len("data: "):]) for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert events and events[-1]["status"] == "succeeded"
    job_id = events[-1]["id"]
    assert set(events[-1]["outputs"]) == {"ply", "spz"}
    spz = gsply.read_spz(tmp_path / "photo.spz")
    assert len(spz.means) == tiny_gaussians_claimed()
    job = httpx.get(f"{server}/jobs/{job_id}", timeout=10).json()
    assert job["results"]["spz"] == f"/jobs/{job_id}/result.spz"


def test_render_block_returns_a_png(server: str, tmp_path: Path) -> None:
    run_block("render", tmp_path, server)
    with Image.open(tmp_path / "preview.png") as preview:
        assert preview.format == "PNG"
        pixels = np.asarray(preview.convert("RGB"))
    assert pixels.std() > 0  # a scene was drawn, not a blank frame
