// Gestures on the scene: mouse and touch orbit, pinch and pan (three.js OrbitControls, set up here), and a
// double click or double tap back to the photo's view. Imports nothing: the viewer hands in three.js.

// A drag of one pixel turns the scene by this many degrees (200 px: 60 degrees), whatever the canvas size.
const DRAG_DEGREES_PER_PX = 0.3;

/**
 * OrbitControls on `canvas` for `camera`: drag (one finger) orbits, right-drag or Shift+drag pans, wheel
 * (two fingers) zooms and pans, easing out. `onChange` after each move, `onReset` on a double click or tap.
 */
export function orbitControls(THREE, OrbitControls, camera, canvas, { onChange, onReset }) {
  const controls = new OrbitControls(camera, canvas);
  controls.enableDamping = true;
  controls.dampingFactor = 0.25;
  controls.screenSpacePanning = true;
  controls.touches = { ONE: THREE.TOUCH.ROTATE, TWO: THREE.TOUCH.DOLLY_PAN }; // one finger orbits, two pinch and pan
  controls.addEventListener("change", onChange);
  canvas.addEventListener("dblclick", onReset);
  onDoubleTap(canvas, onReset);
  return controls;
}

/** Makes a drag turn the scene by `DRAG_DEGREES_PER_PX` whatever the canvas's height (`heightPx`). */
export function setDragSpeed(THREE, controls, heightPx) {
  // OrbitControls turns by 2 pi * rotateSpeed per canvas height dragged; this makes it a fixed angle per pixel.
  controls.rotateSpeed = (THREE.MathUtils.degToRad(DRAG_DEGREES_PER_PX) * heightPx) / (2 * Math.PI);
}

/** Calls `callback` on a double tap (two short touches close in time and place, one finger). */
function onDoubleTap(element, callback) {
  const fingers = new Set();
  let down = null; // the current touch, while it may still be a tap
  let lastTap = null;
  element.addEventListener("pointerdown", (event) => {
    if (event.pointerType !== "touch") return;
    fingers.add(event.pointerId);
    down = fingers.size === 1 ? { x: event.clientX, y: event.clientY, t: event.timeStamp } : null;
    if (!down) lastTap = null; // a pinch is no tap
  });
  const lift = (event) => {
    if (!fingers.delete(event.pointerId) || !down) return;
    const tap = event.type === "pointerup" && event.timeStamp - down.t < 300 &&
      Math.hypot(event.clientX - down.x, event.clientY - down.y) < 15;
    if (tap && lastTap && down.t - lastTap.t < 450 && Math.hypot(down.x - lastTap.x, down.y - lastTap.y) < 40) {
      lastTap = null;
      callback();
    } else {
      lastTap = tap ? down : null;
    }
    down = null;
  };
  element.addEventListener("pointerup", lift);
  element.addEventListener("pointercancel", lift);
}
