"""`static/sequence.js` in Debian's Chromium: a clip's `.sogv` (made here by the tiny network from a clip of a
real photo panning) decoded by WebCodecs gives, frame after frame, the Gaussians our Python reader gives
(`app.formats.sequence.SequenceReader`, whose frames render within 35 dB of the per-frame PLYs:
tests/video/test_sogv.py), and a damaged stream settles every frame asked. The page's player (play/pause,
slider, Spark) is tests/web/test_page_player.py's."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.formats.sequence import SequenceReader
from app.predictor import SharpPredictor
from app.sequence import run_sequence
from app.video import VideoLimits
from tests.helpers import LiveServer, make_clip

FRAMES = 4
SAMPLE = 97  # every 97th Gaussian is compared (131,072 of them in a frame)
DECODE = """async ({ frames, step }) => {
  const { openSequence } = await import('/static/sequence.js');
  const buffer = await (await fetch('/test/clip.sogv')).arrayBuffer();
  const sequence = await openSequence(buffer);
  const out = [];
  for (const k of frames) {
    const g = await sequence.frame(k);
    const pick = (array, width) => {
      const values = [];
      for (let i = 0; i < g.count; i += step) for (let c = 0; c < width; c++) values.push(array[width * i + c]);
      return values;
    };
    out.push({ count: g.count, positions: pick(g.positions, 3), scales: pick(g.scales, 3),
               rotations: pick(g.rotations, 4), colors: pick(g.colors, 3), opacities: pick(g.opacities, 1) });
  }
  let refused = '';
  try { await sequence.frame(frames.length + 99); } catch (error) { refused = String(error); }
  return { numFrames: sequence.numFrames, out, refused };
}"""


@pytest.fixture(scope="module")
def sogv(tiny_predictor: SharpPredictor) -> bytes:
    files: dict[str, bytes] = {}
    run_sequence(tiny_predictor, make_clip(FRAMES, shift_px=4, size=(320, 192)), {"sequence": {}},
                 sink=files.__setitem__, limits=VideoLimits(max_duration_s=60, max_frames=20, max_pixels=10**6),
                 preview=False)
    return files["sequence.sogv"]


def test_the_browser_decodes_every_frame_of_a_sequence_as_our_reader_does(page: Any, server: LiveServer,
                                                                         sogv: bytes) -> None:
    page.route(f"{server.url}/test/clip.sogv", lambda route: route.fulfill(body=sogv,
                                                                          content_type="application/octet-stream"))
    page.goto(f"{server.url}/viewer")
    order = [0, 1, 3, 2]  # forward, a jump, then back: each from its key frame
    result = page.evaluate(DECODE, {"frames": order, "step": SAMPLE})
    assert result["numFrames"] == FRAMES and "is not in this sequence" in result["refused"]
    reader = SequenceReader(sogv)
    previous = None
    for k, got in zip(order, result["out"], strict=True):
        want = reader.frame(k)
        assert got["count"] == want.num_gaussians == 131_072
        for name, width in (("positions", 3), ("scales", 3), ("rotations", 4), ("colors", 3), ("opacities", 1)):
            expected = np.asarray(getattr(want, name), dtype=np.float64).reshape(-1, width)[::SAMPLE].reshape(-1)
            np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-4, atol=1e-6, err_msg=f"{k} {name}")
        if previous is not None:
            assert not np.array_equal(previous, got["positions"])  # the frames advance: the camera moved
        previous = got["positions"]


DAMAGED = """async () => {
  const { openSequence } = await import('/static/sequence.js');
  const sequence = await openSequence(await (await fetch('/test/damaged.sogv')).arrayBuffer());
  const outcomes = [];
  for (const k of [0, 1, 0]) {
    try {
      const g = await sequence.frame(k);
      outcomes.push(`frame ${k}: ${g.count} Gaussians`);
    } catch (error) {
      outcomes.push(`frame ${k}: ${error}`);
    }
  }
  return outcomes;
}"""


def test_a_damaged_stream_settles_every_frame_asked(page: Any, server: LiveServer, sogv: bytes) -> None:
    """The key frame of one stream zeroed (its parameter sets with it): each frame asked is answered, with its
    Gaussians or an error, in order, and a frame asked again after an error restarts its decoders; never a hang."""
    header = 16 + int.from_bytes(sogv[12:16], "little")  # docs/formats.md: magic, version, manifest length
    offset, size, key = json.loads(sogv[16:header])["streams"]["position"]["packets"][0]
    assert key
    damaged = bytearray(sogv)
    damaged[header + offset: header + offset + size] = bytes(size)
    page.route(f"{server.url}/test/damaged.sogv",
               lambda route: route.fulfill(body=bytes(damaged), content_type="application/octet-stream"))
    page.goto(f"{server.url}/viewer")
    outcomes = page.evaluate(DAMAGED)
    assert [outcome.split(":")[0] for outcome in outcomes] == ["frame 0", "frame 1", "frame 0"], outcomes
    assert "Error" in outcomes[0] and "Error" in outcomes[2], outcomes  # no key frame: no picture
