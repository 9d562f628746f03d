"""The ``sequence`` output (`app.formats.sequence`) at the real size: a 2-frame clip of the conformance photo
panning (160x96), predicted by the `tiny_full` preset (1,179,648 Gaussians a frame: 1536 px whatever the
clip's size; the renders, at the clip's size, cost less).
The `.sogv` stays under a quarter of the per-frame SOGs and within the job store's bound, and each frame K as
`render --frame K` reads it (`load_scene`) renders within 35 dB PSNR of that frame's float32 PLY, by
bench/sequence.py's picture and PSNR."""

from __future__ import annotations

import pytest

from app.jobs.size import file_bytes
from app.predictor import SharpPredictor
from app.render.scene_io import load_scene
from app.sequence import run_sequence
from bench.sequence import picture, psnr
from tests.helpers import make_clip
from tests.video.test_sogv import LIMITS

FRAMES = 2
NUM_GAUSSIANS = 1_179_648


@pytest.fixture(scope="module")
def clip_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    predictor = SharpPredictor.load("tiny_full", device="cpu", progress=False)
    run_sequence(predictor, make_clip(FRAMES), {"sequence": {}, "ply": {}, "sog": {}},
                 sink=files.__setitem__, limits=LIMITS, preview=False)
    return files


def test_a_full_size_clip_is_a_quarter_of_its_sogs_and_each_frame_renders_within_35_db(clip_files) -> None:
    body = clip_files["sequence.sogv"]
    sogs = sum(len(clip_files[f"frames/{k:06d}.sog"]) for k in range(FRAMES))
    assert len(body) <= 0.25 * sogs, (len(body), sogs)
    assert len(body) <= FRAMES * file_bytes("sequence", NUM_GAUSSIANS)
    quality = []
    for k in range(FRAMES):
        got = load_scene(body, name="sequence.sogv", frame=k)
        want = load_scene(clip_files[f"frames/{k:06d}.ply"], name=f"{k:06d}.ply")
        assert got.num_gaussians == want.num_gaussians == NUM_GAUSSIANS
        quality.append(psnr(picture(got), picture(want)))
    print(f".sogv of {FRAMES} frames at {NUM_GAUSSIANS:,} Gaussians: {len(body):,} B "
          f"({len(body) / FRAMES / NUM_GAUSSIANS:.2f} B a Gaussian a frame), {len(body) / sogs:.3f} of the SOGs' "
          f"{sogs:,} B ({sogs / FRAMES / NUM_GAUSSIANS:.2f} B); PSNR by frame: {[round(q, 2) for q in quality]} dB")
    assert min(quality) >= 35.0, quality
