"""Benchmark of the page's clip player (static/player.js): a clip's `.sogv` played in Debian's Chromium with
software WebGL (SwiftShader), and what bounds its frame rate there.

    .venv/bin/python -m bench.player [--preset tiny] [--frames 24] [--played 12]

Starts the server on loopback, makes a clip job (`bench.video.make_clip`: the conformance photo panning,
320 x 192 at 30 fps) with `outputs=spz,sequence`, opens its link in the page, waits for the player, presses
Play until `--played` frames have been shown, and prints what the page reports:

- `page_playback_fps`: frames shown a second while playing (the page's `data-playback-fps`);
- `page_fill_ms_per_frame`: writing a frame's Gaussians into Spark's splats while playing (`data-fill-ms`);
- `page_decode_ms_per_frame`: decoding a frame (its five streams by WebCodecs, then its Gaussians) as the
  player does, in static/sequence_worker.js, the clip's frames in order, once playing has stopped (while
  Spark draws, its SwiftShader work takes the same cores, so the decode times the page shows then,
  `data-decode-ms`, are wall times of a shared machine);
- `page_player_work_fps`: 1000 over the larger of those two (the worker decodes the next frame while the
  page fills this one), the rate the player would reach if drawing cost nothing;
- `swiftshader_instanced_quads_ms` and `swiftshader_plain_quads_ms`: in the same browser, one draw of as
  many quads as the clip has Gaussians, as instances of one quad (the way Spark draws splats) and as plain
  triangles; their ratio `swiftshader_instanced_over_plain` is SwiftShader's cost of instancing, which
  Spark's every frame pays (a GPU draws both in well under a millisecond).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from bench.page import CHROMIUM_ARGS, DESKTOP, start_server  # noqa: E402
from bench.video import make_clip  # noqa: E402
from tests.web.browser import poll  # noqa: E402

TIMEOUT_S = 1800.0  # a frame of a full-size clip takes SwiftShader most of a minute to draw

# One draw of `count` quads (2 x 2 px, blended) as instances or as plain triangles, timed to a pixel read back.
QUADS = r"""
([count, instanced]) => {
  const canvas = document.createElement("canvas");
  canvas.width = 760;
  canvas.height = 507;
  const gl = canvas.getContext("webgl2");
  const vertex = `#version 300 es
  precision highp float;
  void main() {
    int splat = ${instanced ? "gl_InstanceID" : "gl_VertexID / 6"};
    int corner = ${instanced ? "gl_VertexID" : "(gl_VertexID % 6 < 3 ? gl_VertexID % 6 : gl_VertexID % 6 - 2)"};
    vec2 centre = vec2(float(splat % 512) / 256.0 - 1.0, float(splat / 512) / 128.0 - 1.0);
    gl_Position = vec4(centre + (vec2(corner & 1, corner >> 1) * 2.0 - 1.0) * 0.004, 0.0, 1.0);
  }`;
  const fragment = `#version 300 es
  precision highp float; out vec4 color; void main() { color = vec4(0.5); }`;
  const program = gl.createProgram();
  for (const [type, source] of [[gl.VERTEX_SHADER, vertex], [gl.FRAGMENT_SHADER, fragment]]) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    gl.attachShader(program, shader);
  }
  gl.linkProgram(program);
  gl.useProgram(program);
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
  const draw = () => {
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (instanced) gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, count);
    else gl.drawArrays(gl.TRIANGLES, 0, 6 * count);
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
  };
  draw();
  const start = performance.now();
  for (let k = 0; k < 3; k++) draw();
  return (performance.now() - start) / 3;
}
"""

# Every frame of the .sogv at `url` decoded in order in the player's worker (the first, the decoders' start,
# untimed).
DECODE = r"""
async (url) => {
  const { openSequenceInWorker } = await import("/static/sequence.js");
  const sequence = await openSequenceInWorker(await (await fetch(url)).arrayBuffer());
  await sequence.frame(0);
  const start = performance.now();
  for (let k = 1; k < sequence.numFrames; k++) await sequence.frame(k);
  const ms = (performance.now() - start) / (sequence.numFrames - 1);
  sequence.close();
  return ms;
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=24, help="frames of the clip")
    parser.add_argument("--played", type=int, default=12, help="frames to play before reading the figures")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("bench/player.py needs Debian's chromium on PATH (apt-get install -y chromium)")
    server, thread, url = start_server(args.preset)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            job = client.post("/jobs", files={"file": ("pan.mp4", make_clip(args.frames, 320, 192), "video/mp4")},
                              data={"outputs": "spz,sequence", "fps": "30"})
            job.raise_for_status()
            job_id = job.json()["id"]
            while (status := (made := client.get(f"/jobs/{job_id}").json())["status"]) in ("queued", "running"):
                time.sleep(0.5)
            results = made.get("results") or {}
        if status != "succeeded":
            raise SystemExit(f"the clip's job ended {status}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_context(**DESKTOP).new_page()
            page.set_default_timeout(TIMEOUT_S * 1000)  # a click waits for the page's thread between draws
            page.goto(f"{url}/?job={job_id}")
            player = poll(page, "document.body.dataset.player", lambda value: value in ("ready", "error"), TIMEOUT_S)
            if player != "ready":
                raise SystemExit(page.text_content("#playback"))
            gaussians = int(page.evaluate("(async () => (await import('/static/viewer.js')).shownSplats())()"))
            page.click("#play")
            poll(page, "Number(document.body.dataset.playedFrames)", lambda played: played > args.played, TIMEOUT_S)
            figures = page.evaluate("({...document.body.dataset})")
            page.click("#play")
            poll(page, "document.body.dataset.playing", lambda playing: not playing, TIMEOUT_S)
            decode_ms = page.evaluate(DECODE, str(httpx.URL(f"{url}/").join(results["sequence.sogv"])))
            instanced = page.evaluate(QUADS, [gaussians, True])
            plain = page.evaluate(QUADS, [gaussians, False])
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    fill_ms = float(figures["fillMs"])
    print(f"gaussians_per_frame: {gaussians}")
    print(f"page_playback_fps: {float(figures['playbackFps']):.2f}")
    print(f"page_decode_ms_per_frame: {decode_ms:.1f}")
    print(f"page_fill_ms_per_frame: {fill_ms:.1f}")
    print(f"page_player_work_fps: {1000 / max(decode_ms, fill_ms):.1f}")
    print(f"swiftshader_instanced_quads_ms: {instanced:.0f}")
    print(f"swiftshader_plain_quads_ms: {plain:.0f}")
    print(f"swiftshader_instanced_over_plain: {instanced / plain:.1f}")


if __name__ == "__main__":
    main()
