// A clip's `.sogv` ("SOG video", docs/formats.md) read in the browser: the header and manifest parsed, each
// of the five attribute streams decoded by WebCodecs (H.264 High 4:4:4, 10 bits: VideoFrame format I444P10),
// and a frame's samples turned back into Gaussians, as app/formats/sequence.py's reader does.
//
//   const sequence = await openSequence(arrayBuffer);   // sequence.numFrames, sequence.manifest
//   const gaussians = await sequence.frame(k);          // {count, positions, scales, rotations, colors, opacities}
//
// Frames are decoded in order from the key frame at or before k; the decoded samples of the frames after the
// one asked for are kept (up to `AHEAD`), so playing forward decodes each frame once. player.js plays them.

const MAGIC = "SOGVIDEO";
const STREAMS = ["position", "scale", "rotation", "color", "opacity"];
const LEVELS = 1023; // 10-bit samples
const AHEAD = 8; // decoded frames kept per stream beyond the one asked for
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
      const planes = {};
      for (const name of STREAMS) planes[name] = await decoders[name](index);
      return gaussians(planes, manifest, index, side);
    },
  };
}

/** A function `(index) => Promise<[Y, U, V] Uint16Array planes of side x 2 side>` for one stream. */
function streamDecoder(buffer, base, manifest, name) {
  const side = manifest.grid.side;
  const packets = manifest.streams[name].packets;
  const kept = new Map(); // frame index -> planes
  let next = 0; // the next frame the decoder will output
  let decoder = null;
  let pending = [];

  async function copy(frame) {
    const data = new Uint8Array(frame.allocationSize());
    const layout = await frame.copyTo(data);
    const planes = layout.slice(0, 3).map(({ offset, stride }) => {
      const plane = new Uint16Array(side * 2 * side);
      for (let row = 0; row < 2 * side; row++) {
        plane.set(new Uint16Array(data.buffer, offset + row * stride, side), row * side);
      }
      return plane;
    });
    frame.close();
    return planes;
  }

  function restart(from) {
    if (decoder) decoder.close();
    kept.clear();
    pending = [];
    decoder = new VideoDecoder({
      output: (frame) => pending.push(copy(frame)),
      error: (error) => { throw error; },
    });
    decoder.configure({ codec: CODEC, codedWidth: side, codedHeight: 2 * side });
    next = from;
  }

  return async (index) => {
    if (kept.has(index)) return kept.get(index);
    let key = index;
    while (key > 0 && !packets[key][2]) key--;
    if (decoder === null || index < next || key > next) restart(key);
    const stop = Math.min(packets.length, index + 1 + AHEAD);
    for (let k = next; k < stop; k++) {
      const [offset, size, isKey] = packets[k];
      decoder.decode(new EncodedVideoChunk({ type: isKey ? "key" : "delta", timestamp: k,
                                             data: new Uint8Array(buffer, base + offset, size) }));
    }
    await decoder.flush(); // no B-frames: one output per packet, in order
    const first = next;
    const outputs = await Promise.all(pending);
    pending = [];
    outputs.forEach((planes, i) => kept.set(first + i, planes));
    next = first + outputs.length;
    for (const k of kept.keys()) if (k < index) kept.delete(k);
    // flush() ends the stream: the next decode after it must start at a key frame.
    decoder.close();
    decoder = null;
    if (!kept.has(index)) throw new Error(`stream ${name} does not decode frame ${index}`);
    return kept.get(index);
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
  const colors = new Float32Array(3 * count);
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
    colors[i3] = srgbToLinear(color[0][0] + c0[i] * color[0][1]);
    colors[i3 + 1] = srgbToLinear(color[1][0] + c1[i] * color[1][1]);
    colors[i3 + 2] = srgbToLinear(color[2][0] + c2[i] * color[2][1]);
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
  return { count, positions, scales, rotations, colors, opacities };
}
