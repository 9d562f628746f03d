// A clip's `.sogv` ("SOG video", docs/formats.md) read in the browser: the header and manifest parsed, each
// of the five attribute streams decoded by WebCodecs (H.264 High 4:4:4, 10 bits: VideoFrame format I444P10),
// and a frame's samples turned back into Gaussians, as app/formats/sequence.py's reader does.
//
//   const sequence = await openSequence(arrayBuffer);   // sequence.numFrames, sequence.manifest
//   (or openSequenceInWorker(arrayBuffer): the same, decoded in sequence_worker.js; its frames lack `colors`)
//   const gaussians = await sequence.frame(k);          // {count, positions, scales, rotations, colors, opacities}
//                                                       // (and colorsSrgb: the colours as stored, before linearising)
//
// Frames are decoded in order from the key frame at or before k, by decoders kept open while the frames asked
// for go forward, so playing forward decodes each frame once. player.js plays them.

const MAGIC = "SOGVIDEO";
const STREAMS = ["position", "scale", "rotation", "color", "opacity"];
const LEVELS = 1023; // 10-bit samples
const AHEAD = 2; // packets given to a stream's decoder beyond the frame asked for
const CODEC = "avc1.f4001f"; // H.264 High 4:4:4 Predictive, level 3.1 (the decoder takes larger frames too)

/** Parses a `.sogv` file (an ArrayBuffer); throws an Error naming what is wrong. */
export async function openSequence(buffer) {
  if (typeof VideoDecoder === "undefined") throw new Error("this browser has no WebCodecs VideoDecoder");
  const view = new DataView(buffer);
  if (buffer.byteLength < 16 || new TextDecoder().decode(new Uint8Array(buffer, 0, 8)) !== MAGIC) {
    throw new Error("not a .sogv file");
  }
  const version = view.getUint32(8, true);
  const length = view.getUint32(12, true);
  if (version !== 1) throw new Error(`.sogv version ${version} is not supported`);
  if (16 + length > buffer.byteLength) throw new Error("truncated .sogv file");
  const manifest = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 16, length)));
  const base = 16 + length;
  const side = manifest.grid.side;
  const decoders = Object.fromEntries(STREAMS.map((name) => [name, streamDecoder(buffer, base, manifest, name)]));
  return {
    manifest,
    numFrames: manifest.num_frames,
    async frame(index) {
      if (!(index >= 0 && index < manifest.num_frames)) throw new Error(`frame ${index} is not in this sequence`);
      const decoded = await Promise.all(STREAMS.map((name) => decoders[name](index)));
      const planes = Object.fromEntries(STREAMS.map((name, i) => [name, decoded[i]]));
      return gaussians(planes, manifest, index, side);
    },
  };
}

/** `openSequence` run in a dedicated worker (sequence_worker.js; `buffer` is copied to it): the same
 * `{ manifest, numFrames, frame(k) }`, whose frames carry `colorsSrgb` but not the linear `colors`, and
 * `close()`, which ends the worker. Throws as `openSequence` does, or if the worker cannot start. */
export async function openSequenceInWorker(buffer) {
  const worker = new Worker(new URL("./sequence_worker.js", import.meta.url), { type: "module" });
  const waiting = new Map(); // message id -> { resolve, reject }
  let next = 0;
  const failAll = (error) => {
    for (const { reject } of waiting.values()) reject(error);
    waiting.clear();
  };
  worker.onmessage = ({ data }) => {
    const call = waiting.get(data.id);
    waiting.delete(data.id);
    if (data.error !== undefined) call?.reject(new Error(data.error));
    else call?.resolve(data);
  };
  worker.onerror = (event) => failAll(new Error(event.message || "the decoding worker failed to start"));
  const call = (message, transfer = []) => new Promise((resolve, reject) => {
    const id = next++;
    waiting.set(id, { resolve, reject });
    worker.postMessage({ id, ...message }, transfer);
  });
  const copy = buffer.slice(0);
  let manifest;
  try {
    ({ manifest } = await call({ open: copy }, [copy]));
  } catch (error) {
    worker.terminate();
    throw error;
  }
  return {
    manifest,
    numFrames: manifest.num_frames,
    async frame(index) {
      return (await call({ frame: index })).gaussians;
    },
    close() {
      worker.terminate();
      failAll(new Error("the sequence was closed"));
    },
  };
}

/** A function `(index) => Promise<[Y, U, V] Uint16Array planes of side x 2 side>` for one stream.
 *
 * One decoder stays open while frames are asked in order: each packet is given to it once, `AHEAD` packets
 * past the frame asked for (what a decoder holds back before it outputs), and its outputs are matched to
 * frames by timestamp. Going back, or past the next key frame, starts a decoder at the key frame at or before
 * the frame asked for. A decoder that stops with the frame asked for still held back (no packets left to
 * push it out) is flushed; after a flush it needs a key frame, so it is closed and the next frame restarts. */
function streamDecoder(buffer, base, manifest, name) {
  const side = manifest.grid.side;
  const packets = manifest.streams[name].packets;
  const frames = new Map(); // frame index -> { output, promise, resolve, reject } of its planes, once given
  let fed = 0; // the next packet to give the decoder
  let decoder = null;

  async function copy(frame) {
    try {
      const data = new Uint8Array(frame.allocationSize());
      const layout = await frame.copyTo(data);
      return layout.slice(0, 3).map(({ offset, stride }) => {
        const plane = new Uint16Array(side * 2 * side);
        for (let row = 0; row < 2 * side; row++) {
          plane.set(new Uint16Array(data.buffer, offset + row * stride, side), row * side);
        }
        return plane;
      });
    } finally {
      frame.close();
    }
  }

  function waiter() {
    const entry = { output: false };
    entry.promise = new Promise((resolve, reject) => Object.assign(entry, { resolve, reject }));
    entry.promise.catch(() => {}); // a frame nobody asks for again may fail unobserved
    return entry;
  }

  function stop(error) {
    if (decoder && decoder.state !== "closed") decoder.close();
    decoder = null;
    for (const entry of frames.values()) entry.reject(error);
    frames.clear();
  }

  function restart(from) {
    stop(new Error(`stream ${name} restarted`));
    const current = new VideoDecoder({
      output: (frame) => {
        const entry = frames.get(frame.timestamp);
        if (decoder !== current || !entry) {
          frame.close();
        } else {
          entry.output = true;
          copy(frame).then(entry.resolve, entry.reject);
        }
      },
      error: (error) => decoder === current && stop(error),
    });
    current.configure({ codec: CODEC, codedWidth: side, codedHeight: 2 * side, optimizeForLatency: true });
    decoder = current;
    fed = from;
  }

  /** Whether `current` has taken every packet given without outputting the frame of `entry`. */
  async function idle(current, entry) {
    const settled = entry.promise.then(() => {}, () => {}); // a decoder error or a restart settles it too
    while (!entry.output && current.state === "configured" && current.decodeQueueSize > 0) {
      await Promise.race([settled, new Promise((resolve) => current.addEventListener("dequeue", resolve, { once: true }))]);
    }
    await new Promise((resolve) => setTimeout(resolve, 0)); // an output sent with the last dequeue comes first
    return !entry.output && decoder === current && current.state === "configured";
  }

  async function drain(current) {
    await current.flush(); // outputs what it held back; then it would need a key frame
    if (decoder === current) {
      decoder.close();
      decoder = null;
    }
  }

  return async (index) => {
    let key = index;
    while (key > 0 && !packets[key][2]) key--;
    if (!frames.has(index) && (decoder === null || index < fed || key > fed)) restart(key);
    for (const k of frames.keys()) if (k < index) frames.delete(k);
    const last = Math.min(packets.length, index + 1 + AHEAD);
    for (; decoder && fed < last; fed++) {
      const [offset, size, isKey] = packets[fed];
      frames.set(fed, waiter());
      decoder.decode(new EncodedVideoChunk({ type: isKey ? "key" : "delta", timestamp: fed,
                                             data: new Uint8Array(buffer, base + offset, size) }));
    }
    const entry = frames.get(index);
    if (!entry) throw new Error(`stream ${name} does not decode frame ${index}`);
    if (decoder && fed === packets.length) await drain(decoder); // nothing left to push the last frames out
    else if (decoder && (await idle(decoder, entry))) await drain(decoder); // it holds back more than AHEAD
    return entry.promise;
  };
}

const srgbToLinear = (c) => (c <= 0.04045 ? c / 12.92 : Math.pow((Math.max(c, 0) + 0.055) / 1.055, 2.4));

/** The Gaussians of one frame from its decoded planes (docs/formats.md, "Sequence"). */
function gaussians(planes, manifest, index, side) {
  const ranges = manifest.frames[index].ranges;
  const count = 2 * side * side;
  // Each channel's sample s in 0..LEVELS maps to lo + s * step: [lo, step] per stream and channel.
  const affine = (name) => ranges[name].map(([lo, hi]) => [lo, (hi - lo) / LEVELS]);
  const [[dLo, dStep], [uLo, uStep], [vLo, vStep]] = affine("position");
  const scale = affine("scale");
  const color = affine("color");
  const [[xLo, xStep], [yLo, yStep], [zLo, zStep]] = affine("rotation");
  const [[oLo, oStep]] = affine("opacity");
  const [pd, pu, pv] = planes.position;
  const [s0, s1, s2] = planes.scale;
  const [c0, c1, c2] = planes.color;
  const [r0, r1, r2] = planes.rotation;
  const [op] = planes.opacity;
  const { f_px: f, image_width: width, image_height: height } = manifest;
  const cellX = width / side;
  const cellY = height / side;
  const positions = new Float32Array(3 * count);
  const scales = new Float32Array(3 * count);
  const rotations = new Float32Array(4 * count);
  const colorsSrgb = new Float32Array(3 * count);
  const opacities = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const row = Math.floor(i / side) % side;
    const column = i % side;
    const z = Math.exp(dLo + pd[i] * dStep);
    const u = (column + 0.5 + uLo + pu[i] * uStep) * cellX;
    const v = (row + 0.5 + vLo + pv[i] * vStep) * cellY;
    const i3 = 3 * i;
    positions[i3] = ((u - width / 2) * z) / f;
    positions[i3 + 1] = ((v - height / 2) * z) / f;
    positions[i3 + 2] = z;
    scales[i3] = Math.exp(scale[0][0] + s0[i] * scale[0][1]) * z;
    scales[i3 + 1] = Math.exp(scale[1][0] + s1[i] * scale[1][1]) * z;
    scales[i3 + 2] = Math.exp(scale[2][0] + s2[i] * scale[2][1]) * z;
    colorsSrgb[i3] = color[0][0] + c0[i] * color[0][1];
    colorsSrgb[i3 + 1] = color[1][0] + c1[i] * color[1][1];
    colorsSrgb[i3 + 2] = color[2][0] + c2[i] * color[2][1];
    const x = xLo + r0[i] * xStep, y = yLo + r1[i] * yStep, w3 = zLo + r2[i] * zStep;
    const w = Math.sqrt(Math.max(0, 1 - x * x - y * y - w3 * w3));
    const norm = Math.hypot(w, x, y, w3) || 1;
    const i4 = 4 * i;
    rotations[i4] = w / norm;
    rotations[i4 + 1] = x / norm;
    rotations[i4 + 2] = y / norm;
    rotations[i4 + 3] = w3 / norm;
    opacities[i] = Math.min(1, Math.max(0, oLo + op[i] * oStep));
  }
  let colors = null; // linear, made when first asked: the player hands Spark the stored sRGB ones
  return {
    count, positions, scales, rotations, opacities, colorsSrgb,
    get colors() {
      colors ??= colorsSrgb.map(srgbToLinear);
      return colors;
    },
  };
}
