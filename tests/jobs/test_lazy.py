"""Lazy outputs (`app.jobs.lazy`, docs/jobs.md#lazy-outputs): a photo's job with several outputs succeeds with
its first output, keeps its prediction, and makes the others after it or when first downloaded; real uvicorn
servers on loopback, the `tiny` model, a real jobs folder (restarted on the same folder)."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import orjson

from app.jobs.size import projected_bytes
from app.jobs.store import PREDICTION_FILE
from tests.helpers import LiveServer, assert_error, events, make_clip
from tests.jobs.test_jobs import ARRAYS, image_bytes, submit, wait_for

TINY_GAUSSIANS = 131_072


def synchronous(client: httpx.Client, photo: bytes, name: str) -> bytes:
    """The bytes `POST /predict/<name>` gives for `photo` (what every job's file must be)."""
    response = client.post(f"/predict/{name}", files={"file": ("photo.png", photo, "image/png")})
    assert response.status_code == 200, response.text
    return response.content


def test_a_job_succeeds_with_the_output_asked_first_and_makes_the_others_after(start: Callable[..., LiveServer],
                                                                              tmp_path: Path) -> None:
    photo = image_bytes(11)
    with start().client() as client:
        assert_error(client.post("/jobs", files={"file": ("p.png", photo, "image/png")},
                                 data={"outputs": "ply,spz", "first": "glb"}), 422, "validation_error")
        assert submit(client, photo, outputs="sog,ply")["first"] == "sog"  # default: the first listed
        job = submit(client, photo, outputs="ply,spz,sog", first="spz")
        assert job["first"] == "spz" and job["files"] == {"ply": "waiting", "spz": "waiting", "sog": "waiting"}
        seen = events(client, job["id"], ("job", "file"))
        jobs = [event["data"] for event in seen if event["event"] == "job"]
        files = [event["data"] for event in seen if event["event"] == "file"]

        # Nothing is ready before it succeeds, and it succeeds with the output asked first ready.
        assert all("ready" not in j["files"].values() for j in jobs if j["status"] != "succeeded")
        succeeded = next(j for j in jobs if j["status"] == "succeeded")
        assert succeeded["files"]["spz"] == "ready" and succeeded["stage"] == "done"
        assert sorted(succeeded["results"]) == ["ply", "sog", "spz"]  # every URL at once: a download waits
        # The stream ends once every output is ready, with one `file` event for each.
        final = jobs[-1]
        assert final["files"] == {"ply": "ready", "spz": "ready", "sog": "ready"}
        assert sorted(f["format"] for f in files) == ["ply", "sog", "spz"] and {f["state"] for f in files} == {"ready"}
        assert not (tmp_path / "jobs" / job["id"] / PREDICTION_FILE).exists()  # dropped once all are made
        assert set(final["timings_ms"]) == {"decode", "preprocess", "forward", "postprocess", "encode"}
        for event in files:
            body = client.get(event["url"]).content
            assert event["url"] == final["results"][event["format"]] and len(body) == event["bytes"]
            assert body == synchronous(client, photo, event["format"]), event["format"]


def test_without_encoding_ahead_each_output_is_made_when_first_downloaded(start: Callable[..., LiveServer],
                                                                          tmp_path: Path) -> None:
    photo = image_bytes(12)
    with start(jobs_encode_ahead=False).client() as client:
        job = wait_for(client, submit(client, photo, outputs="ply,splat,spz,glb", first="spz")["id"])
        assert job["files"] == {"ply": "waiting", "splat": "waiting", "spz": "ready", "glb": "waiting"}
        kept = tmp_path / "jobs" / job["id"] / PREDICTION_FILE
        assert kept.is_file()
        assert not (tmp_path / "jobs" / job["id"] / "result.splat").exists()

        splat = client.get(job["results"]["splat"])  # made now, and waited for
        assert splat.status_code == 200 and splat.content == synchronous(client, photo, "splat")
        assert splat.headers["x-sharp-num-gaussians"] == str(TINY_GAUSSIANS)
        assert client.get(f"/jobs/{job['id']}").json()["files"]["ply"] == "waiting"  # nothing made unasked

        # Two downloads of one output at once: it is made once, both wait for it and get the same bytes.
        got: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: got.append(client.get(job["results"]["glb"]))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.status_code for r in got] == [200, 200] and got[0].content == got[1].content
        assert got[0].content == synchronous(client, photo, "glb")

        head = client.head(job["results"]["ply"])  # a HEAD asks for it too (download managers probe first)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(synchronous(client, photo, "ply"))
        final = client.get(f"/jobs/{job['id']}").json()
        assert set(final["files"].values()) == {"ready"} and not kept.exists()
        assert events(client, job["id"])[-1]["files"]["ply"] == "ready"  # settled: the stream ends at once


def test_an_output_asked_for_the_moment_its_job_succeeds_is_made(start: Callable[..., LiveServer]) -> None:
    """A client sees the job succeed before the run has handed its pending outputs to the encoder (the state is
    still being saved); a download then must not wait `SHARP_JOB_FILE_WAIT_S` for nothing (it did: the encoder
    dropped the wish of a job it did not know yet). The run's last tidy is made slow here to widen that gap."""
    live = start(jobs_encode_ahead=False, job_file_wait_s=20)
    store = live.app.state.jobs.store
    tidy = store.tidy

    def slow_tidy(job: Any) -> None:
        tidy(job)
        if job.status == "succeeded":
            time.sleep(3)

    store.tidy = slow_tidy
    with live.client() as client:
        photo = image_bytes(15)
        job = submit(client, photo, outputs="spz,splat", first="spz")
        seen = wait_for(client, job["id"], ("succeeded",), timeout=120)
        assert seen["files"]["splat"] == "waiting"
        splat = client.get(seen["results"]["splat"])  # during the slow tidy: made now, and waited for
        assert splat.status_code == 200, splat.text
        assert splat.content == synchronous(client, photo, "splat")
        assert wait_for(client, job["id"])["files"] == {"spz": "ready", "splat": "ready"}


def test_a_restart_with_outputs_still_to_make_serves_every_one(start: Callable[..., LiveServer],
                                                                tmp_path: Path) -> None:
    photo = image_bytes(13)
    first = start(jobs_encode_ahead=False)
    with first.client() as client:
        job = wait_for(client, submit(client, photo, outputs="ply,spz,glb,json", first="spz")["id"])
        spz = client.get(job["results"]["spz"]).content
    first.stop()  # the other three were never made: the stop cut their encodes short
    state = orjson.loads((tmp_path / "jobs" / job["id"] / "job.json").read_bytes())
    assert state["status"] == "succeeded" and state["pending"] == ["ply", "glb", "json"]

    with start().client() as client:
        final = events(client, job["id"])[-1]  # made in the background after the start, from the kept prediction
        assert final["files"] == {"ply": "ready", "spz": "ready", "glb": "ready", "json": "ready"}
        assert client.get(final["results"]["spz"]).content == spz
        for name in ("ply", "glb"):
            assert client.get(final["results"][name]).content == synchronous(client, photo, name), name
        got = client.get(final["results"]["json"]).json()
        expected = client.post("/predict", files={"file": ("photo.png", photo, "image/png")}).json()
        assert all(got[name] == expected[name] for name in ARRAYS)
        assert {"forward", "postprocess"} <= set(got["metadata"]["timings_ms"])  # the prediction's own timings
        assert not (tmp_path / "jobs" / job["id"] / PREDICTION_FILE).exists()


def test_an_output_that_cannot_be_made_is_a_409_and_the_others_are_served(start: Callable[..., LiveServer],
                                                                          tmp_path: Path) -> None:
    first = start(jobs_encode_ahead=False)
    with first.client() as client:
        job = wait_for(client, submit(client, outputs="ply,spz,splat", first="spz")["id"])
    first.stop()
    (tmp_path / "jobs" / job["id"] / PREDICTION_FILE).write_bytes(b"not an npz: a disk that lost it")

    with start(jobs_encode_ahead=False).client() as client:
        error = assert_error(client.get(job["results"]["ply"]), 409, "result_failed")
        assert "ply could not be made" in error["message"] and "damaged" in error["message"]
        assert client.get(job["results"]["spz"]).status_code == 200
        now = client.get(f"/jobs/{job['id']}").json()
        assert now["status"] == "succeeded" and now["files"] == {"ply": "failed", "spz": "ready", "splat": "waiting"}
        assert "ply" not in now["results"]
        assert_error(client.get(job["results"]["splat"]), 409, "result_failed")
        seen = events(client, job["id"], ("file",))
        assert {f["format"]: f["state"] for f in seen} == {"ply": "failed", "spz": "ready", "splat": "failed"}
        assert all(f["error"]["code"] == "prediction_damaged" for f in seen if f["state"] == "failed")


def test_a_job_with_outputs_to_make_reserves_its_projection_until_they_are_made(start: Callable[..., LiveServer],
                                                                                tmp_path: Path) -> None:
    photo = image_bytes(14)
    one_job = len(photo) + projected_bytes(["ply", "spz"], {}, TINY_GAUSSIANS)
    assert one_job > len(photo) + 76 * TINY_GAUSSIANS + 56 * TINY_GAUSSIANS  # the kept prediction counts
    with start(jobs_encode_ahead=False, jobs_max_bytes=int(1.5 * one_job)).client() as client:
        job = wait_for(client, submit(client, photo, outputs="ply,spz", first="spz")["id"])
        kept = (tmp_path / "jobs" / job["id"] / PREDICTION_FILE).stat().st_size
        assert 56 * TINY_GAUSSIANS < kept <= 56 * TINY_GAUSSIANS + 65_536
        # Succeeded, but its ply is still to make: it holds its whole projection, and nothing evicts it.
        files = {"file": ("p.png", photo, "image/png")}
        assert_error(client.post("/jobs", files=files, data={"outputs": "ply,spz"}), 503, "store_full")
        assert client.get(job["results"]["ply"]).status_code == 200
        # Settled: it holds its two files alone (the prediction is gone), and the next job takes its room.
        stored = sum(p.stat().st_size for p in (tmp_path / "jobs" / job["id"]).iterdir() if p.name != "job.json")
        assert stored == sum(len(client.get(job["results"][n]).content) for n in ("ply", "spz"))
        second = wait_for(client, submit(client, photo, outputs="ply,spz")["id"])
        assert second["status"] == "succeeded"
        assert_error(client.get(job["results"]["spz"]), 410, "job_expired")  # evicted to make that room


def decoded(mp4: bytes) -> list[np.ndarray]:
    """The pictures of an H.264 video, decoded with PyAV."""
    with av.open(io.BytesIO(mp4)) as video:
        return [frame.to_ndarray(format="rgb24") for frame in video.decode(video.streams.video[0])]


def test_a_clip_succeeds_with_its_frames_and_manifest_then_makes_its_preview_and_zip(
        start: Callable[..., LiveServer], tmp_path: Path) -> None:
    with start().client() as client:
        response = client.post("/jobs", files={"file": ("clip.mp4", make_clip(3, fps=10), "video/mp4")},
                               data={"outputs": "spz,ply", "align": "scale"})
        assert response.status_code == 202, response.text
        seen = events(client, response.json()["id"], ("job", "file"))
        jobs = [event["data"] for event in seen if event["event"] == "job"]
        files = [event["data"] for event in seen if event["event"] == "file"]
        succeeded = next(j for j in jobs if j["status"] == "succeeded")
        frames = [f"frames/{k:06d}.{ext}" for k in range(3) for ext in ("spz", "ply")]
        # Succeeded before its preview was made (the encoder may have taken it up by the time the stream looks).
        assert succeeded["files"] == {**{path: "ready" for path in [*frames, "manifest.json"]},
                                      "preview.mp4": succeeded["files"]["preview.mp4"], "sequence.zip": "waiting"}
        assert succeeded["files"]["preview.mp4"] in ("waiting", "encoding")
        assert "preview" not in orjson.dumps(succeeded["timings_ms"]).decode()  # no render before it succeeded
        assert any(j["files"].get("preview.mp4") == "encoding" for j in jobs)
        final = jobs[-1]
        assert final["files"]["preview.mp4"] == final["files"]["sequence.zip"] == "ready"
        assert sorted(f["format"] for f in files) == sorted([*frames, "manifest.json", "preview.mp4", "sequence.zip"])
        assert [f["format"] for f in files][-2:] == ["preview.mp4", "sequence.zip"]  # the zip after: it holds it
        preview = client.get(final["results"]["preview.mp4"])
        assert preview.status_code == 200 and preview.headers["content-type"] == "video/mp4"
        pictures = decoded(preview.content)
        assert len(pictures) == 3 and pictures[0].shape == (96, 320, 3) and pictures[0][:, 160:].mean() > 5
        with zipfile.ZipFile(io.BytesIO(client.get(final["results"]["sequence.zip"]).content)) as archive:
            assert archive.read("preview.mp4") == preview.content
        assert not (tmp_path / "jobs" / final["id"] / "input").exists()  # kept for the preview, then dropped


def test_a_clip_succeeds_before_its_zip_which_is_made_on_download_also_after_a_restart(
        start: Callable[..., LiveServer], tmp_path: Path) -> None:
    first = start(jobs_encode_ahead=False)
    with first.client() as client:
        response = client.post("/jobs", files={"file": ("clip.mp4", make_clip(2, fps=10), "video/mp4")},
                               data={"outputs": "spz"})
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"])
        paths = ["frames/000000.spz", "frames/000001.spz", "manifest.json"]
        assert job["files"] == {**{path: "ready" for path in paths}, "preview.mp4": "waiting",
                                "sequence.zip": "waiting"}
        assert sorted(job["results"]) == sorted([*paths, "preview.mp4", "sequence.zip"])
        files = {path: client.get(job["results"][path]).content for path in paths}
    first.stop()  # the preview and the zip were never made
    assert (tmp_path / "jobs" / job["id"] / "input").is_file()  # the upload is kept for the preview

    with start(jobs_encode_ahead=False).client() as client:
        got = client.get(job["results"]["sequence.zip"])  # the preview is made first: the zip holds it
        assert got.status_code == 200, got.text
        preview = client.get(job["results"]["preview.mp4"]).content
        assert len(decoded(preview)) == 2
        with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
            assert sorted(archive.namelist()) == sorted([*paths, "preview.mp4"])
            assert all(archive.read(path) == files[path] for path in paths)
            assert archive.read("preview.mp4") == preview
        assert events(client, job["id"])[-1]["files"]["sequence.zip"] == "ready"
    assert not (tmp_path / "jobs" / job["id"] / "input").exists()


def test_a_stop_mid_preview_then_a_start_makes_it(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    first = start(jobs_encode_ahead=False, job_file_wait_s=0.01)
    with first.client() as client:
        response = client.post("/jobs", files={"file": ("clip.mp4", make_clip(8, size=(320, 192)), "video/mp4")},
                               data={"outputs": "ply"})
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"])
        assert_error(client.get(job["results"]["preview.mp4"]), 503, "result_encoding")  # asked: to be made
        # The encoder takes the download's wish on its own task: the file goes `encoding` soon after (the
        # render of 8 frames then takes seconds).
        deadline = time.monotonic() + 60
        while (state := client.get(f"/jobs/{job['id']}").json()["files"]["preview.mp4"]) == "waiting":
            assert time.monotonic() < deadline, "the preview was never started"
            time.sleep(0.02)
        assert state == "encoding", state
    first.stop()  # mid-preview: its render of 8 frames is cut short
    state = orjson.loads((tmp_path / "jobs" / job["id"] / "job.json").read_bytes())
    assert state["status"] == "succeeded" and state["pending"] == ["preview.mp4", "sequence.zip"]
    assert not (tmp_path / "jobs" / job["id"] / "sequence" / "preview.mp4").exists()

    with start().client() as client:
        final = events(client, job["id"])[-1]  # made in the background after the start
        assert final["files"]["preview.mp4"] == "ready" and final["status"] == "succeeded"
        pictures = decoded(client.get(final["results"]["preview.mp4"]).content)
        assert len(pictures) == 8 and pictures[0].shape == (192, 640, 3)


def test_a_preview_that_cannot_be_made_fails_alone(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    first = start(jobs_encode_ahead=False)
    with first.client() as client:
        response = client.post("/jobs", files={"file": ("clip.mp4", make_clip(2, fps=10), "video/mp4")},
                               data={"outputs": "spz"})
        job = wait_for(client, response.json()["id"])
    first.stop()
    (tmp_path / "jobs" / job["id"] / "input").write_bytes(b"not a clip: a disk that lost it")

    with start(jobs_encode_ahead=False).client() as client:
        error = assert_error(client.get(job["results"]["preview.mp4"]), 409, "result_failed")
        assert "preview.mp4 could not be made" in error["message"] and "no longer decodes" in error["message"]
        now = client.get(f"/jobs/{job['id']}").json()
        assert now["status"] == "succeeded" and now["files"]["preview.mp4"] == "failed"
        assert now["files"]["frames/000001.spz"] == "ready"
        with zipfile.ZipFile(io.BytesIO(client.get(job["results"]["sequence.zip"]).content)) as archive:
            assert "preview.mp4" not in archive.namelist()  # the zip is made without it
        seen = {f["format"]: f for f in events(client, job["id"], ("file",))}
        assert seen["preview.mp4"]["state"] == "failed" and seen["sequence.zip"]["state"] == "ready"
        assert seen["preview.mp4"]["error"]["code"] == "preview_failed"
    assert not (tmp_path / "jobs" / job["id"] / "input").exists()
