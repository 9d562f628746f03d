"""`app.sequence.run_sequence` with the tiny network on clips made here: align=none gives the photos'
files byte for byte, a repeated frame aligns with factor exactly 1, rotated clips give upright scenes, and the
manifest and the preview say what was made."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import orjson
import pytest
from PIL import Image

from app import pipeline
from app.budget import BudgetError
from app.formats import decode_spz, read_ply
from app.predictor import SharpPredictor
from app.sequence import run_sequence
from app.sequence.align import ScaleChain, depth_grid, scale_step, scaled
from app.video import Sampling, VideoLimits, read_frames
from tests.helpers import digest, make_clip, prediction_of, random_scene
from tests.http import hostile_inputs as h

LIMITS = VideoLimits(max_duration_s=60.0, max_frames=20, max_pixels=1920 * 1080)


def sequence(predictor: SharpPredictor, clip: bytes, **options) -> tuple[dict, dict[str, bytes]]:
    files: dict[str, bytes] = {}
    manifest = run_sequence(predictor, clip, options.pop("outputs", {"ply": {}}), sink=files.__setitem__,
                            limits=LIMITS, **{"preview": False, **options})
    return manifest, files


def test_align_none_gives_each_frames_photo_prediction_byte_for_byte(predictor: SharpPredictor,
                                                                       tmp_path: Path) -> None:
    clip = make_clip(2, shift_px=6)
    manifest, files = sequence(predictor, clip, outputs={"ply": {}, "spz": {}})
    assert sorted(files) == ["frames/000000.ply", "frames/000000.spz", "frames/000001.ply", "frames/000001.spz",
                             "manifest.json"]
    for frame in read_frames(clip, Sampling(), LIMITS):
        photo = tmp_path / f"{frame.index:06d}.png"
        Image.fromarray(frame.rgb).save(photo)  # lossless: the decoded frame's pixels
        single = pipeline.run(predictor, photo, {"ply": {}, "spz": {}})
        assert files[f"frames/{frame.index:06d}.ply"] == single.outputs["ply"].body
        assert files[f"frames/{frame.index:06d}.spz"] == single.outputs["spz"].body
    assert [record["scale"] for record in manifest["frames"]] == [1.0, 1.0]
    assert orjson.loads(files["manifest.json"]) == manifest


def test_a_repeated_frame_aligns_with_factor_exactly_one(predictor: SharpPredictor) -> None:
    manifest, files = sequence(predictor, make_clip(3, shift_px=0, lossless=True), align="scale")
    assert [record["scale"] for record in manifest["frames"]] == [1.0, 1.0, 1.0]
    assert files["frames/000000.ply"] == files["frames/000001.ply"] == files["frames/000002.ply"]


def test_a_rotated_clip_gives_upright_scenes(predictor: SharpPredictor) -> None:
    manifest, files = sequence(predictor, make_clip(1, rotation=90), f_px=200.0)
    scene = read_ply(files["frames/000000.ply"])
    assert (scene.image_width, scene.image_height) == (96, 160)  # stored 160 x 96, displayed portrait
    assert manifest["frames"][0]["f_px"] == 200.0 and manifest["f_px_source"] == "request"


def test_the_manifest_and_the_preview(predictor: SharpPredictor) -> None:
    manifest, files = sequence(predictor, make_clip(4, fps=10), sampling=Sampling(fps=5), align="scale",
                               preview=True)
    assert manifest["num_frames"] == 2 and manifest["align"] == "scale" and manifest["preview"] == "preview.mp4"
    records = manifest["frames"]
    assert [r["index"] for r in records] == [0, 1] and [r["time_s"] for r in records] == pytest.approx([0, 0.2])
    assert records[0]["scale"] == 1.0 and 0.5 < records[1]["scale"] < 2.0
    assert all(r["num_gaussians"] == 131_072 and r["f_px"] == manifest["f_px"] for r in records)
    assert set(records[0]["timings_ms"]) == {"decode", "preprocess", "forward", "postprocess", "encode", "preview"}
    with av.open(io.BytesIO(files["preview.mp4"])) as video:
        pictures = [frame.to_ndarray(format="rgb24") for frame in video.decode(video.streams.video[0])]
    assert len(pictures) == 2 and pictures[0].shape == (96, 320, 3)
    assert pictures[0][:, 160:].mean() > 5  # the render half is not empty


def decoded(mp4: bytes) -> list[np.ndarray]:
    """The pictures of an H.264 video, decoded with PyAV."""
    with av.open(io.BytesIO(mp4)) as video:
        return [frame.to_ndarray(format="rgb24") for frame in video.decode(video.streams.video[0])]


@pytest.mark.parametrize("source", ["ply", "spz"])
def test_a_preview_made_afterwards_from_the_frames_files_shows_the_one_made_as_they_went(
        predictor: SharpPredictor, source: str) -> None:
    """`render_preview` (a job's lazy preview): the clip decoded again beside each frame's scene read back from
    its PLY (float32: the very preview made during the run) or its SPZ (quantised: pictures close to it); a
    frame's file gone, or a clip that no longer decodes, is a `PreviewError` saying so."""
    from app.sequence.preview import PreviewError, render_preview

    clip = make_clip(3, fps=10)
    manifest, files = sequence(predictor, clip, sampling=Sampling(fps=5), align="scale", preview=True,
                               outputs={"ply": {}, "spz": {}})
    later = render_preview(clip, manifest, files.get, source=source, limits=LIMITS)
    assert (later == files["preview.mp4"]) == (source == "ply")  # from the PLY: byte for byte
    eager, lazy = decoded(files["preview.mp4"]), decoded(later)
    assert len(lazy) == len(eager) == manifest["num_frames"] == 2 and lazy[0].shape == eager[0].shape
    for before, after in zip(eager, lazy, strict=True):  # from the SPZ: 42-44 dB
        mse = np.mean((before.astype(np.float64) - after.astype(np.float64)) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 38, source
    with pytest.raises(PreviewError, match=r"frames/000001\.ply is gone"):
        render_preview(clip, manifest, {**files, "frames/000001.ply": None}.get, source="ply", limits=LIMITS)
    with pytest.raises(PreviewError, match="no longer decodes"):
        render_preview(clip[:600], manifest, files.get, source="ply", limits=LIMITS)


def test_a_budget_keeps_exactly_its_count_in_every_frame_after_the_alignment(predictor: SharpPredictor) -> None:
    clip = make_clip(2, shift_px=6)
    manifest, files = sequence(predictor, clip, outputs={"ply": {}, "spz": {}}, align="scale", max_gaussians=0.25)
    for index in (0, 1):
        assert read_ply(files[f"frames/{index:06d}.ply"]).num_gaussians == 32_768
        assert decode_spz(files[f"frames/{index:06d}.spz"]).num_gaussians == 32_768
    assert [(r["num_gaussians"], r["num_predicted"]) for r in manifest["frames"]] == [(32_768, 131_072)] * 2
    unbudgeted, _ = sequence(predictor, clip, align="scale")
    assert [r["num_predicted"] for r in unbudgeted["frames"]] == [131_072] * 2
    # The scale is fitted on every Gaussian predicted, before the budget: the same factors as without one.
    assert [r["scale"] for r in manifest["frames"]] == [r["scale"] for r in unbudgeted["frames"]]


def test_align_none_with_a_budget_gives_each_frames_budgeted_photo_prediction(predictor: SharpPredictor,
                                                                               tmp_path: Path) -> None:
    clip = make_clip(2, shift_px=6)
    _, files = sequence(predictor, clip, outputs={"ply": {}, "sog": {}}, max_gaussians=5000)
    for frame in read_frames(clip, Sampling(), LIMITS):
        photo = tmp_path / f"{frame.index:06d}.png"
        Image.fromarray(frame.rgb).save(photo)
        single = pipeline.run(predictor, photo, {"ply": {}, "sog": {}}, max_gaussians=5000)
        assert single.prediction.scene.num_gaussians == 5000
        for name, suffix in (("ply", "ply"), ("sog", "sog")):
            assert digest(files[f"frames/{frame.index:06d}.{suffix}"]) == digest(single.outputs[name].body)


@pytest.mark.parametrize("budget", [131_073, 0, 1.5, float("nan")])
def test_a_bad_budget_is_refused_before_any_frame_is_decoded(predictor: SharpPredictor, budget: float) -> None:
    stages: list[str] = []
    with pytest.raises(BudgetError, match=r"max_gaussians must be a count from 1 to 131,072 or a fraction in \(0, 1\]"):
        # A truncated clip: decoding it would fail (`corrupt_video`), so the budget is checked first.
        sequence(predictor, make_clip(3)[:500], max_gaussians=budget,
                 progress=lambda frame, frames, stage, fraction: stages.append(stage))
    assert stages == []


def test_the_scale_rule() -> None:
    scene = random_scene(5000, seed=3)
    far = scaled(prediction_of(scene), 2.0).scene
    assert np.allclose(far.positions, scene.positions * 2) and np.allclose(far.scales, scene.scales * 2)
    assert scale_step(depth_grid(far), depth_grid(scene)) == pytest.approx(2.0)
    chain = ScaleChain()
    assert chain.step(depth_grid(scene)) == 1.0
    assert chain.step(depth_grid(far)) == pytest.approx(0.5)  # the far copy is brought back to the first
    assert chain.step(depth_grid(far)) == pytest.approx(0.5)  # and stays there
    assert scale_step(depth_grid(scene), depth_grid(scene)) == 1.0


@pytest.mark.parametrize(("clip", "half"), [
    (lambda: h.mjpeg_clip([(4, 4), (4, 4)]), (8, 8)),
    (lambda: h.mjpeg_clip([(2400, 8), (2400, 8)]), (1920, 8)),
    (lambda: h.mjpeg_clip([(8, 1000), (8, 1000)]), (8, 360)),
    (lambda: h.mjpeg_clip([(32, 16), (64, 32), (16, 8)]), (32, 16)),
], ids=["4x4", "2400x8", "8x1000", "size-changes"])
def test_tiny_extreme_and_changing_frames_make_every_file_and_the_preview(predictor: SharpPredictor, clip,
                                                                          half: tuple[int, int]) -> None:
    """Issue 28: a side under 8 px or an extreme aspect failed at the preview after a frame was predicted; a
    size change mid-clip crashed it after every frame. Now each half of the preview fits the renderer, and a
    later frame of the first's aspect is scaled to the first's size."""
    manifest, files = sequence(predictor, clip(), preview=True, max_gaussians=64)
    assert manifest["num_frames"] == len([name for name in files if name.startswith("frames/")])
    with av.open(io.BytesIO(files["preview.mp4"])) as video:
        pictures = [frame.to_ndarray(format="rgb24") for frame in video.decode(video.streams.video[0])]
    assert len(pictures) == manifest["num_frames"] and pictures[0].shape == (half[1], 2 * half[0], 3)
