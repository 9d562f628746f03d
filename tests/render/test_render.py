"""The Gaussian-splat renderer: against an independent per-pixel reference, a photo, orientation, paths,
encoders, scene loading, the CLI and bad input."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.gaussians import GaussianScene, srgb_to_linear
from app.render import Camera, RenderError, camera_path, input_camera, look_at, prepare_scene, render, to_uint8


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


# ----------------------------------------------------------------------------------------------------------------
# Independent reference: the 3DGS image formation written out per Gaussian, float64, numpy.


def reference_render(scene: GaussianScene, camera: Camera, background=(0.0, 0.0, 0.0)):
    """(colour (H, W, 3), accumulated depth Σ w z (H, W), alpha (H, W)), float64."""
    w, x, y, z = (np.asarray(scene.rotations, np.float64) / np.linalg.norm(scene.rotations, axis=1)[:, None]).T
    rot = np.empty((scene.num_gaussians, 3, 3))
    rot[:, 0] = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], 1)
    rot[:, 1] = np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], 1)
    rot[:, 2] = np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1)
    colors = np.clip(scene.colors_srgb().astype(np.float64), 0, 1)
    pix_x, pix_y = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    color = np.zeros((camera.height, camera.width, 3))
    depth = np.zeros((camera.height, camera.width))
    transmittance = np.ones((camera.height, camera.width))
    done = np.zeros((camera.height, camera.width), dtype=bool)
    cam = scene.positions.astype(np.float64) @ camera.rotation.T + camera.translation
    for i in np.argsort(cam[:, 2], kind="stable"):
        px, py, pz = cam[i]
        if pz <= 0.01:
            continue
        sigma = rot[i] @ np.diag(scene.scales[i].astype(np.float64) ** 2) @ rot[i].T
        lim_x = ((camera.cx + 0.3 * camera.width) / camera.fx, (1.3 * camera.width - camera.cx) / camera.fx)
        lim_y = ((camera.cy + 0.3 * camera.height) / camera.fy, (1.3 * camera.height - camera.cy) / camera.fy)
        tx = min(max(px / pz, -lim_x[0]), lim_x[1]) * pz
        ty = min(max(py / pz, -lim_y[0]), lim_y[1]) * pz
        jac = np.array([[camera.fx / pz, 0, -camera.fx * tx / pz**2], [0, camera.fy / pz, -camera.fy * ty / pz**2]])
        cov = jac @ camera.rotation @ sigma @ camera.rotation.T @ jac.T + 0.3 * np.eye(2)
        conic = np.linalg.inv(cov)
        dx = pix_x - (camera.fx * px / pz + camera.cx)
        dy = pix_y - (camera.fy * py / pz + camera.cy)
        power = -0.5 * (conic[0, 0] * dx * dx + 2 * conic[0, 1] * dx * dy + conic[1, 1] * dy * dy)
        alpha = np.minimum(0.99, scene.opacities[i] * np.exp(power))
        use = (alpha >= 1 / 255) & ~done
        after = transmittance * (1 - alpha)
        done |= use & (after < 1e-4)
        use &= after >= 1e-4
        weight = np.where(use, alpha * transmittance, 0.0)
        color += weight[..., None] * colors[i]
        depth += weight * pz
        transmittance = np.where(use, after, transmittance)
    color += transmittance[..., None] * np.asarray(background)
    return color, depth, 1 - transmittance


def random_scene(rng: np.random.Generator, n: int, f_px: float = 30.0, width: int = 32, height: int = 24):
    z = rng.permutation(np.linspace(0.8, 5.0, n)) + rng.uniform(0, 1e-3, n)  # distinct depths
    positions = np.stack([rng.uniform(-0.7, 0.7, n) * z * width / (2 * f_px),
                          rng.uniform(-0.7, 0.7, n) * z * height / (2 * f_px), z], 1)
    positions[0, 2] = -1.0  # behind the camera
    positions[1, 2] = 0.005  # in front of the camera, inside the near plane
    positions[2, 0] = 50.0  # far off-screen
    q = rng.normal(size=(n, 4))
    return GaussianScene(
        positions=positions.astype(np.float32),
        scales=np.exp(rng.uniform(np.log(0.01), np.log(0.4), (n, 3))).astype(np.float32),
        rotations=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        colors=srgb_to_linear(rng.uniform(0, 1, (n, 3))),
        opacities=rng.uniform(0.05, 1.0, n).astype(np.float32),
        f_px=f_px, image_width=width, image_height=height,
    )


@pytest.mark.parametrize("seed", range(6))
def test_matches_per_pixel_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, int(rng.integers(20, 61)))
    camera = input_camera(scene)
    if seed % 2:  # another viewpoint: eye moved and rotated to look at the scene's middle
        camera = camera.with_pose(*look_at(np.array([0.3, -0.2, -0.4]), np.array([0.0, 0.0, 3.0])))
    background = (0.2, 0.5, 1.0) if seed % 3 == 0 else (0.0, 0.0, 0.0)
    ref_color, ref_depth, ref_alpha = reference_render(scene, camera, background)
    out = render(scene, camera, background=background, tile_size=8, pass_size=4)
    color, depth, alpha = (t.numpy().astype(np.float64) for t in (out.color, out.depth, out.alpha))
    assert ref_alpha.max() > 0.5  # the scene is visible
    # >= 45 dB is the requirement; measured 125-137 dB (float32 rounding only), so hold it to 80 dB.
    assert psnr(color, ref_color) >= 80
    assert psnr(alpha, ref_alpha) >= 80
    assert psnr(depth * alpha, ref_depth, peak=5.0) >= 80
    covered = ref_alpha > 0.5
    np.testing.assert_allclose(depth[covered], ref_depth[covered] / ref_alpha[covered], rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Real content and orientation.


def photo_plane(rgb: np.ndarray, f_px: float, z: float = 2.0, scale_px: float = 0.5) -> GaussianScene:
    """One opaque isotropic Gaussian per pixel at depth z, exactly on the pixel's ray through its centre."""
    height, width = rgb.shape[:2]
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    positions = np.stack([(u - width / 2) * z / f_px, (v - height / 2) * z / f_px, np.full(u.shape, z)], -1)
    n = width * height
    return GaussianScene(
        positions=positions.reshape(n, 3).astype(np.float32),
        scales=np.full((n, 3), scale_px * z / f_px, dtype=np.float32),
        rotations=np.tile(np.array([1, 0, 0, 0], dtype=np.float32), (n, 1)),
        colors=srgb_to_linear(rgb.reshape(n, 3).astype(np.float32) / 255),
        opacities=np.full(n, 0.999, dtype=np.float32),
        f_px=f_px, image_width=width, image_height=height,
    )


PHOTO_PSNR_DB = 30.0
"""Measured 31.4 dB for coffee.png at 150x100 with Gaussians of 0.25 px std (the 0.3 px² low-pass blurs each
into its neighbours, and equal depths put some neighbours in front), 26.7 dB at 0.5 px seen at twice the size."""


def test_photo_plane_renders_back_to_the_photo(conformance_dir: Path) -> None:
    from PIL import Image

    photo = np.asarray(Image.open(conformance_dir / "coffee.png").convert("RGB").resize((150, 100), Image.BILINEAR))
    scene = photo_plane(photo, f_px=140.0, scale_px=0.25)
    out = render(scene, input_camera(scene))
    assert out.color.shape == (100, 150, 3)
    assert float(out.alpha.min()) > 0.99
    np.testing.assert_allclose(out.depth.numpy(), 2.0, rtol=1e-5)
    assert psnr(to_uint8(out.color) / 255, photo / 255) >= PHOTO_PSNR_DB
    # Larger Gaussians seen at twice the size still give the photo (upsampled).
    scene = photo_plane(photo, f_px=140.0, scale_px=0.5)
    big = render(scene, input_camera(scene, (300, 200)))
    assert psnr(to_uint8(big.color)[::2, ::2] / 255, photo / 255) >= PHOTO_PSNR_DB - 5


def red_top_blue_bottom(width: int = 40, height: int = 30) -> GaussianScene:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[: height // 2, :, 0] = 255
    rgb[height // 2:, :, 2] = 255
    return photo_plane(rgb, f_px=40.0, scale_px=0.7)


def test_orientation_top_of_the_scene_is_the_top_of_the_image() -> None:
    scene = red_top_blue_bottom()
    image = to_uint8(render(scene, input_camera(scene)).color)
    assert (image[2, 20] == [255, 0, 0]).all() and (image[-3, 20] == [0, 0, 255]).all()
    # Moving the eye right makes near content move left in the image: a point at the centre shifts left.
    cam = input_camera(scene)
    moved = cam.with_pose(np.eye(3), -np.array([0.2, 0.0, 0.0]))
    dot = GaussianScene(positions=np.array([[0, 0, 2.0]], np.float32), scales=np.full((1, 3), 0.02, np.float32),
                        rotations=np.array([[1, 0, 0, 0]], np.float32), colors=np.ones((1, 3), np.float32),
                        opacities=np.ones(1, np.float32), f_px=40.0, image_width=40, image_height=30)
    columns = render(dot, moved).alpha.numpy().sum(0)
    assert int(np.argmax(columns)) < 20 - 2


@pytest.mark.parametrize("path", ["orbit", "swipe", "dolly", "zoom"])
def test_paths_start_at_the_input_view_and_move(path: str) -> None:
    scene = red_top_blue_bottom()
    gaussians = prepare_scene(scene)
    cameras = camera_path(scene, path, 8, (40, 30))
    assert len(cameras) == 8
    first = render(gaussians, cameras[0]).color.numpy()
    assert np.array_equal(first, render(gaussians, input_camera(scene, (40, 30))).color.numpy())
    assert not np.array_equal(first, render(gaussians, cameras[2]).color.numpy())
    assert np.allclose(cameras[0].rotation, np.eye(3)) and np.allclose(cameras[0].eye, 0)


def test_tile_and_pass_sizes_do_not_change_the_image() -> None:
    scene = random_scene(np.random.default_rng(7), 60, width=37, height=29)
    camera = input_camera(scene)
    base = render(scene, camera, tile_size=4, pass_size=32).color.numpy()
    for tile, k, chunk in [(8, 3, 1 << 10), (16, 64, 1 << 21), (5, 1, 100)]:
        other = render(scene, camera, tile_size=tile, pass_size=k, max_elements=chunk).color.numpy()
        np.testing.assert_allclose(other, base, atol=2e-5)


# ----------------------------------------------------------------------------------------------------------------
# Encoders, scene files, the command line.


def test_mp4_and_png_encoders() -> None:
    import av
    from PIL import Image

    from app.render import encode_image, encode_mp4

    scene = red_top_blue_bottom(64, 48)
    gaussians = prepare_scene(scene)
    frames = [to_uint8(render(gaussians, cam).color) for cam in camera_path(scene, "orbit", 12, (64, 48))]
    data = encode_mp4(frames, fps=24)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(decoded) == 12 and decoded[0].shape == (48, 64, 3)
    assert psnr(decoded[0] / 255, frames[0] / 255) > 25  # lossy, but the same picture
    png = Image.open(io.BytesIO(encode_image(frames[0], "png")))
    assert png.size == (64, 48) and np.array_equal(np.asarray(png), frames[0])
    with pytest.raises(RenderError) as error:
        encode_mp4([np.zeros((31, 64, 3), np.uint8)])
    assert error.value.code == "bad_size"


def _scene_file(tmp_path: Path, fmt: str = "ply", vertex_only: bool = False) -> tuple[GaussianScene, Path]:
    from app.formats.ply import encode_ply
    from app.formats.splat import encode_splat
    from app.formats.spz import encode_spz

    scene = random_scene(np.random.default_rng(3), 200, f_px=60.0, width=64, height=48)
    path = tmp_path / f"scene.{fmt}"
    data = encode_ply(scene, vertex_only=vertex_only) if fmt == "ply" else {"splat": encode_splat,
                                                                             "spz": encode_spz}[fmt](scene)
    path.write_bytes(data)
    return scene, path


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz"])
def test_load_scene_formats_render_alike(tmp_path: Path, fmt: str) -> None:
    from app.render import load_scene

    scene, path = _scene_file(tmp_path, fmt)
    loaded = load_scene(path) if fmt == "ply" else load_scene(path.read_bytes(), name=path.name, f_px=60.0,
                                                                     size=(64, 48))
    assert (loaded.f_px, loaded.image_width, loaded.image_height) == (60.0, 64, 48)
    reference = render(scene, input_camera(scene)).color.numpy()
    assert psnr(render(loaded, input_camera(loaded)).color.numpy(), reference) > (60 if fmt == "ply" else 30)


def test_generic_3dgs_ply_with_extra_properties_gets_the_default_camera(tmp_path: Path) -> None:
    from plyfile import PlyData, PlyElement

    from app.formats.ply import VERTEX_PROPERTIES, read_ply
    from app.render import load_scene

    _, path = _scene_file(tmp_path, "ply", vertex_only=True)
    vertex = PlyData.read(str(path))["vertex"].data
    names = [*VERTEX_PROPERTIES[:6], *(f"f_rest_{i}" for i in range(9)), *VERTEX_PROPERTIES[6:], "nx"]
    table = np.zeros(len(vertex), dtype=[(name, "<f4") for name in names])
    for name in VERTEX_PROPERTIES:
        table[name] = vertex[name]
    table["f_rest_0"] = 5.0
    for text in (False, True):  # binary, then ASCII (read through plyfile)
        other = tmp_path / f"generic_{text}.ply"
        PlyData([PlyElement.describe(table, "vertex")], text=text).write(str(other))
        loaded = load_scene(other)
        assert (loaded.image_width, loaded.image_height) == (1024, 768)
        assert loaded.f_px == pytest.approx(30 * math.hypot(1024, 768) / math.hypot(36, 24))
        np.testing.assert_allclose(loaded.positions, read_ply(path).positions, rtol=1e-6)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "render", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)


def test_cli_png_and_mp4(tmp_path: Path) -> None:
    import av
    from PIL import Image

    _, path = _scene_file(tmp_path)
    result = run_cli(str(path), "-o", str(tmp_path / "out.png"), "--size", "80x60", "--background", "white",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "out.png")
    assert image.size == (80, 60) and image.mode == "RGB"
    assert main(["render", str(path), "-o", str(tmp_path / "depth.png"), "--depth"]) == 0
    assert Image.open(tmp_path / "depth.png").size == (64, 48)
    assert main(["render", str(path), "-o", str(tmp_path / "view.jpg"), "--size", "32", "--f-px", "20"]) == 0
    assert Image.open(tmp_path / "view.jpg").size == (32, 24)
    assert main(["render", str(path), "-o", str(tmp_path / "loop.gif"), "--frames", "3", "--path", "orbit"]) == 0
    assert Image.open(tmp_path / "loop.gif").n_frames == 3
    assert main(["render", str(path), "-o", str(tmp_path / "out.mp4"), "--frames", "9", "--path", "swipe",
                 "--size", "64"]) == 0
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 9 and (frames[0].width, frames[0].height) == (64, 48)


@pytest.mark.parametrize("args", [
    ["missing.ply", "-o", "x.png"],
    ["{not_splat}", "-o", "x.png"],
    ["{scene}", "-o", "x.mp4", "--size", "63x48"],
    ["{scene}", "-o", "x.png", "--size", "5000x100"],
    ["{scene}", "-o", "x.mp4", "--frames", "601"],
    ["{scene}", "-o", "x.txt"],
    ["{scene}", "-o", "x.png", "--background", "purple"],
    ["{scene}", "-o", "x.png", "--f-px", "-3"],
])
def test_cli_bad_input_exits_2_with_one_error_line(tmp_path: Path, args: list[str], capsys) -> None:
    _, path = _scene_file(tmp_path)
    not_splat = tmp_path / "mesh.ply"
    not_splat.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                          b"end_header\n\x00\x00\x00\x00")
    args = [a.format(scene=path, not_splat=not_splat) for a in args]
    args[2] = str(tmp_path / args[2])
    assert main(["render", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.mp4").exists()


def test_cli_bad_input_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.splat"
    bad.write_bytes(b"y" * 33)
    result = run_cli(str(bad), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Bad input through the API.


def _with(scene: GaussianScene, **changes) -> GaussianScene:
    from dataclasses import replace

    return replace(scene, **changes)


def test_bad_input_raises_render_error() -> None:
    from app.render import load_scene

    scene = random_scene(np.random.default_rng(1), 20)
    cases = {
        "non_finite": [_with(scene, positions=np.where(np.arange(60).reshape(20, 3) == 7, np.nan,
                                                        scene.positions).astype(np.float32)),
                       _with(scene, scales=np.full((20, 3), np.inf, np.float32))],
        "empty_scene": [scene.select(np.array([], dtype=np.int64))],
    }
    for code, scenes in cases.items():
        for bad in scenes:
            with pytest.raises(RenderError) as error:
                render(bad, input_camera(scene))
            assert error.value.code == code
    for size in [(5000, 100), (100, 4), (7, 7), (64.5, 48)]:
        with pytest.raises(RenderError) as error:
            input_camera(scene, size)
        assert error.value.code == "bad_size"
    for frames in [0, 601, 2.5]:
        with pytest.raises(RenderError) as error:
            camera_path(scene, "orbit", frames)
        assert error.value.code == "bad_frames"
    with pytest.raises(RenderError):
        camera_path(scene, "spiral", 10)
    with pytest.raises(RenderError) as error:
        render(scene, input_camera(scene), background=(2, 0, 0))
    assert error.value.code == "bad_option"
    for data, name in [(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "a.ply"),
                       (b"\x1f\x8b garbage", "a.spz"), (b"x" * 33, "a.splat"), (b"hello", None), (b"", "a.ply")]:
        with pytest.raises(RenderError) as error:
            load_scene(data, name=name)
        assert error.value.code in ("not_a_splat", "unsupported_format")
    assert isinstance(error.value, ValueError)


def test_one_call_outputs_for_the_http_layer() -> None:
    from PIL import Image

    from app.render import output_size, render_still, render_video

    scene = red_top_blue_bottom(40, 30)
    png = Image.open(io.BytesIO(render_still(scene, size=24, background=(1, 1, 1))))
    assert png.size == (24, 18) and png.getpixel((12, 2)) == (255, 0, 0)
    assert output_size(scene, None) == (40, 30)
    for kwargs, code in [({"fps": 0}, "bad_option"), ({"fmt": "avi"}, "unsupported_format"),
                         ({"size": (41, 30)}, "bad_size"), ({"frames": 1000}, "bad_frames"),
                         ({"background": (0, 0, 9)}, "bad_option")]:
        with pytest.raises(RenderError) as error:
            render_video(scene, **kwargs)
        assert error.value.code == code
    assert render_video(scene, frames=2, size=(40, 30), fmt="gif").startswith(b"GIF89a")
