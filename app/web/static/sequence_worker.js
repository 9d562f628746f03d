// A dedicated worker that decodes a `.sogv` off the page's thread: sequence.js's openSequence, run here, so
// that decoding a frame and making its Gaussians take nothing from the thread that fills Spark's splats.
//
//   { id, open: ArrayBuffer }  ->  { id, manifest }
//   { id, frame: k }           ->  { id, gaussians: { count, positions, scales, rotations, opacities, colorsSrgb } }
//                                  (the arrays transferred, not copied)
//   either                     ->  { id, error: message }

import { openSequence } from "./sequence.js";

let sequence = null;

self.onmessage = async ({ data: { id, open, frame } }) => {
  try {
    if (open) {
      sequence = await openSequence(open);
      self.postMessage({ id, manifest: sequence.manifest });
      return;
    }
    if (!sequence) throw new Error("no sequence is open");
    const { count, positions, scales, rotations, opacities, colorsSrgb } = await sequence.frame(frame);
    self.postMessage({ id, gaussians: { count, positions, scales, rotations, opacities, colorsSrgb } },
                     [positions.buffer, scales.buffer, rotations.buffer, opacities.buffer, colorsSrgb.buffer]);
  } catch (error) {
    self.postMessage({ id, error: String(error?.message ?? error) });
  }
};
