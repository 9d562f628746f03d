// The viewer: Spark on three.js, loaded from the import map once; the canvas's size and the photo's field of
// view; the rendering loop (a frame only when something changed) and its test contract (dataset.frames,
// visible, firstFrameMs, rendering, viewDegrees); showing a scene from the photo's viewpoint; the reset.

import { $, ApiError, NARROW_SCREEN, Superseded, body, page, setState } from "./state.js";
import { orbitControls, setDragSpeed } from "./gestures.js";

// Motion below this per frame is not drawn: a drag's easing-out stops there (its rest is under 0.2 degrees).
const STILL_DEGREES_PER_FRAME = 0.05;

const viewer = {
  ready: null, // Promise of the loaded modules
  THREE: null,
  renderer: null,
  scene: null,
  camera: null,
  controls: null,
  spark: null, // Spark's SparkRenderer: it sorts the splats for the view in a worker, then asks for a frame
  mesh: null,
  view: null, // the photo's half field of view as tangents { x, y } (W / 2f, H / 2f); null: no camera known
  home: { depth: 2 },
  pending: false,
  frames: 0,
  visible: false,
  last: null, // the camera's { quaternion, position } at the last frame
  moved: false, // whether the user has moved the camera since the scene's own viewpoint was set
};

/** Spark's SPZ reader keeps the file's coordinates. SPZ stores RUB axes (x right, y up, z back), the
 * axes of a three.js camera; PLY and .splat from SHARP keep OpenCV axes (x right, y down, z forward)
 * and are turned 180 degrees about x. Either way the camera at the origin looking down -z sees the photo.
 * SOG (PlayCanvas) keeps the coordinates of the PLY it was made from. */
const OPENCV_TO_THREE = { ply: true, splat: true, spz: false, sog: true };
// Spark's name for each file type it reads (SOG is its "pcsogszip": a zip of WebP textures and meta.json).
const SPARK_FILE_TYPES = { ply: "ply", spz: "spz", splat: "splat", sog: "pcsogszip" };

/** Loads three.js, OrbitControls and Spark and sets up the canvas (once); a clear error without them. */
export async function loadRenderer() {
  if (body.dataset.vendor === "missing") {
    throw new ApiError(0, "renderer_missing", $("vendor-banner").textContent.replace(/\s+/g, " ").trim());
  }
  viewer.ready ??= (async () => {
    const [THREE, { OrbitControls }, Spark] = await Promise.all([
      import("three"),
      import("three/addons/controls/OrbitControls.js"),
      import("@sparkjsdev/spark"),
    ]);
    viewer.THREE = THREE;
    viewer.Spark = Spark;
    const canvas = $("canvas");
    const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
    renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    renderer.setClearColor(0x101114, 1);
    const scene = new THREE.Scene();
    const camera = new THREE.PerspectiveCamera(50, 4 / 3, 0.01, 1000);
    const spark = new Spark.SparkRenderer({ renderer, onDirty: requestRender });
    scene.add(spark);
    const controls = orbitControls(THREE, OrbitControls, camera, canvas, {
      onChange: requestRender,
      onReset: () => viewer.mesh && resetView(),
    });
    controls.addEventListener("start", () => { viewer.moved = true; }); // a drag, pinch or wheel by the user
    Object.assign(viewer, { renderer, scene, camera, controls, spark });
    new ResizeObserver(layout).observe($("stage"));
    layout();
  })().catch((error) => {
    viewer.ready = null;
    throw new ApiError(0, "renderer_missing", `The 3D renderer could not be loaded (${error.message}). Run \`make web\` on the server.`);
  });
  return viewer.ready;
}

/**
 * The canvas. Wide screens: the largest rectangle of the photo's aspect ratio that fits the stage
 * (letterboxed). Narrow screens: the whole stage, the photo fitted inside it, so that the scene can be
 * orbited and zoomed on most of the screen. A scene without a camera fills the stage with a 50 degree view.
 */
function layout() {
  if (!viewer.renderer) return;
  const stage = $("stage").getBoundingClientRect();
  const { THREE, camera, controls, view } = viewer;
  const aspect = view && !matchMedia(NARROW_SCREEN).matches ? view.x / view.y : stage.width / Math.max(1, stage.height);
  let width = stage.width;
  let height = width / aspect;
  if (height > stage.height) {
    height = stage.height;
    width = height * aspect;
  }
  width = Math.max(1, Math.floor(width));
  height = Math.max(1, Math.floor(height));
  viewer.renderer.setSize(width, height, true);
  camera.aspect = width / height;
  // The vertical field of view that shows the whole photo: its own, or wider where the canvas is narrower.
  camera.fov = view ? THREE.MathUtils.radToDeg(2 * Math.atan(Math.max(view.y, view.x / camera.aspect))) : 50;
  camera.updateProjectionMatrix();
  setDragSpeed(THREE, controls, height);
  requestRender();
}



function requestRender() {
  if (viewer.pending || !viewer.renderer) return;
  viewer.pending = true;
  body.dataset.rendering = "1";
  requestAnimationFrame(renderFrame);
}

function renderFrame() {
  viewer.pending = false;
  const moving = viewer.controls.update() && !cameraStill();
  viewer.renderer.render(viewer.scene, viewer.camera);
  if (viewer.mesh) {
    viewer.frames += 1;
    body.dataset.frames = String(viewer.frames);
    const forward = viewer.camera.getWorldDirection(new viewer.THREE.Vector3());
    body.dataset.viewDegrees = viewer.THREE.MathUtils.radToDeg(Math.acos(Math.min(1, -forward.z))).toFixed(1);
    if (!viewer.visible && frameHasSplats()) {
      viewer.visible = true;
      body.dataset.visible = "1";
      body.dataset.firstFrameMs = String(Math.round(performance.now() - page.startedAt));
    }
  }
  // Damping eases out over several frames; until the splats first show, keep drawing (Spark sorts
  // asynchronously and says so through onDirty, but a few extra frames are cheap and certain).
  if (moving || (viewer.mesh && !viewer.visible && viewer.frames < 600)) requestRender();
  // `rendering` stays while Spark sorts for this view (it asks for the frame that shows the sorted splats).
  if (!viewer.pending && !(viewer.spark.sorting || viewer.spark.sortDirty)) delete body.dataset.rendering;
}

/** Whether the camera moved less than `STILL_DEGREES_PER_FRAME` since the last frame (OrbitControls' own
 * threshold is in scene units, which for a scene hundreds of metres deep means hundreds of frames). */
function cameraStill() {
  const { THREE, camera, controls } = viewer;
  const last = viewer.last ?? { quaternion: new THREE.Quaternion(), position: new THREE.Vector3(1e9, 0, 0) };
  const still = THREE.MathUtils.radToDeg(camera.quaternion.angleTo(last.quaternion)) < STILL_DEGREES_PER_FRAME &&
    camera.position.distanceTo(last.position) < 1e-3 * controls.getDistance();
  last.quaternion.copy(camera.quaternion);
  last.position.copy(camera.position);
  viewer.last = last;
  return still;
}

/** Whether the frame just drawn differs from the clear colour in more than 0.5 % of its pixels. */
function frameHasSplats() {
  const gl = viewer.renderer.getContext();
  const width = gl.drawingBufferWidth;
  const height = gl.drawingBufferHeight;
  const pixels = new Uint8Array(width * height * 4);
  // Spark may leave its readback buffer bound; reading into client memory needs none bound.
  const packBuffer = gl.getParameter(gl.PIXEL_PACK_BUFFER_BINDING);
  gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
  gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
  gl.bindBuffer(gl.PIXEL_PACK_BUFFER, packBuffer);
  if (gl.getError() !== gl.NO_ERROR) return false;
  let differing = 0;
  for (let i = 0; i < pixels.length; i += 4 * 7) {
    if (Math.abs(pixels[i] - 0x10) + Math.abs(pixels[i + 1] - 0x11) + Math.abs(pixels[i + 2] - 0x14) > 12) differing += 1;
  }
  return differing > (0.005 * pixels.length) / (4 * 7);
}

/** Shows a scene file (`fileType`: ply, spz, splat or sog) from `camera` ({ fPx, width, height }, or null),
 * named `name` over the stage; `keepView`: where the user has moved the camera to (a clip's next frame),
 * else from the viewpoint of its `source` (`photo`, or a clip's `frame`). `packedSplats`: Spark's
 * PackedSplats to show instead of a file (in the axes of `fileType`; the player updates them in place).
 * `ready`: false for a level of detail that a finer one will replace (lod.js): the page's state is left as it was. */
export async function showScene(bytes, fileType, camera, run, name,
  { keepView = false, source = "photo", packedSplats = null, ready = true } = {}) {
  await loadRenderer();
  run.check();
  const { Spark } = viewer;
  const mesh = packedSplats
    ? new Spark.SplatMesh({ packedSplats })
    : new Spark.SplatMesh({ fileBytes: bytes, fileType: SPARK_FILE_TYPES[fileType], fileName: `scene.${fileType}` });
  await mesh.initialized;
  if (!run.current()) {
    mesh.dispose();
    throw new Superseded();
  }
  if (viewer.mesh) {
    viewer.scene.remove(viewer.mesh);
    viewer.mesh.dispose();
  }
  if (OPENCV_TO_THREE[fileType]) mesh.quaternion.set(1, 0, 0, 0); // 180 degrees about x
  $("preview").hidden = true;
  run.sceneShown = true;
  $("canvas").hidden = false;
  $("placeholder").hidden = true;
  viewer.mesh = mesh;
  viewer.scene.add(mesh);
  viewer.frames = 0;
  viewer.visible = false;
  body.dataset.frames = "0";
  delete body.dataset.visible;
  delete body.dataset.firstFrameMs;

  // The photo's camera: at the origin, looking down -z, y up, with the photo's field of view (see layout()).
  viewer.view = camera?.fPx > 0 && camera.height > 0
    ? { x: camera.width / (2 * camera.fPx), y: camera.height / (2 * camera.fPx) }
    : null;
  viewer.home.depth = medianDepth(mesh, OPENCV_TO_THREE[fileType]);
  const depth = viewer.home.depth;
  viewer.controls.minDistance = depth * 0.02;
  viewer.controls.maxDistance = depth * 20;
  viewer.camera.near = 0.01;
  viewer.camera.far = Math.max(1000, depth * 200);
  if (viewer.view) body.style.setProperty("--scene-aspect", (viewer.view.x / viewer.view.y).toFixed(4));
  else body.style.removeProperty("--scene-aspect");
  const chosenView = keepView && viewer.moved;
  if (!chosenView) resetView();
  layout();
  $("reset-view").disabled = false;
  $("scene-name").textContent = name;
  $("scene-name").hidden = false;
  document.title = `${name} · sharp-serve`;
  if (ready) setState("ready", `Ready: ${name}`, {
    detail: chosenView
      ? `Shown from the view you chose; Reset view goes back to the ${source}'s viewpoint.`
      : `Shown from the ${source}'s viewpoint; the orbit centre is ${depth.toFixed(2)} m in front (median depth).`,
  });
  requestRender();
}

/** Spark's module, once the renderer is loaded (the player builds its PackedSplats with it). */
export async function sparkModule() {
  await loadRenderer();
  return viewer.Spark;
}

/** The shown mesh's PackedSplats were rewritten in place: upload them and draw. */
export function splatsChanged() {
  if (!viewer.mesh?.packedSplats) return;
  viewer.mesh.packedSplats.needsUpdate = true;
  viewer.mesh.updateVersion();
  requestRender();
}

/** The number of splats in the scene shown (0 before one is). */
export function shownSplats() {
  return numSplats(viewer.mesh);
}

function numSplats(mesh) {
  try {
    return mesh?.splats?.getNumSplats?.() ?? mesh?.packedSplats?.numSplats ?? 0;
  } catch {
    return 0;
  }
}

/** Median distance in front of the camera of (a sample of) the splat centres; 2 m if there are none. */
function medianDepth(mesh, opencv) {
  const count = numSplats(mesh);
  const step = Math.max(1, Math.floor(count / 20000));
  const depths = [];
  let index = 0;
  try {
    mesh.forEachSplat((i, center) => {
      if (index++ % step === 0) {
        const depth = opencv ? center.z : -center.z;
        if (depth > 0 && Number.isFinite(depth)) depths.push(depth);
      }
    });
  } catch {
    return 2;
  }
  if (!depths.length) return 2;
  depths.sort((a, b) => a - b);
  return depths[Math.floor(depths.length / 2)];
}

/** Back to the photo's viewpoint: camera at the origin looking at the orbit centre straight ahead. */
function resetView() {
  const { camera, controls } = viewer;
  // An undamped update spends the motion still pending from a drag, so nothing drifts afterwards.
  const damping = controls.enableDamping;
  controls.enableDamping = false;
  controls.update();
  camera.position.set(0, 0, 0);
  camera.up.set(0, 1, 0);
  camera.updateProjectionMatrix();
  controls.target.set(0, 0, -viewer.home.depth);
  controls.update();
  controls.enableDamping = damping;
  viewer.moved = false;
  requestRender();
}

/** "Reset view": back to the photo's viewpoint, once the renderer is set up. */
export function backToPhoto() {
  return viewer.controls && resetView();
}
