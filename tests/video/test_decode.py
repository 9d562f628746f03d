"""`app.video`: clips made here with PyAV (H.264 from the conformance photo) decode as upright RGB frames,
sampled as asked, within the limits; bad clips raise `VideoError`s with their codes."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from app.video import (
    CorruptVideoError,
    Sampling,
    UnsupportedVideoError,
    VideoLimits,
    VideoSelectionError,
    VideoTooLargeError,
    is_video_path,
    looks_like_video,
    probe_video,
    read_frames,
)
from app.video.decode import display_orientation
from tests.helpers import make_clip
from tests.http import hostile_inputs as h

LIMITS = VideoLimits(max_duration_s=60.0, max_frames=50, max_pixels=1920 * 1080)


def frames_of(data: bytes, sampling: Sampling | None = None, limits: VideoLimits = LIMITS) -> list:
    return list(read_frames(data, sampling or Sampling(), limits))


def test_every_frame_in_order_with_its_time() -> None:
    frames = frames_of(make_clip(5, fps=10))
    assert [frame.index for frame in frames] == [0, 1, 2, 3, 4]
    assert [frame.time_s for frame in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert all(frame.rgb.shape == (96, 160, 3) and frame.rgb.dtype == np.uint8 for frame in frames)
    # the clip's content: the photo's crop, through lossy H.264 (a shift of 4 px per frame)
    assert np.abs(frames[0].rgb.astype(int) - frames[4].rgb.astype(int)).mean() > 2


def test_the_rotation_metadata_makes_frames_upright() -> None:
    plain = frames_of(make_clip(1, lossless=True))[0].rgb
    turned = frames_of(make_clip(1, lossless=True, rotation=90))[0].rgb
    assert turned.shape == (160, 96, 3)
    # 90 degrees counter-clockwise is what the display matrix says: the stored top row becomes the left column
    assert np.array_equal(turned, np.rot90(plain))
    assert turned.flags.c_contiguous


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_a_mirroring_display_matrix_flips_the_frame_after_its_turn(rotation: int) -> None:
    plain = frames_of(make_clip(1, lossless=True))[0].rgb
    mirrored = frames_of(make_clip(1, lossless=True, rotation=rotation, mirror=True))[0].rgb
    turned = np.rot90(plain, k=rotation // 90)
    # The same coded pictures (the matrix is container metadata), shown turned, then flipped left-right.
    assert np.array_equal(mirrored, turned[:, ::-1])
    assert not np.array_equal(mirrored, turned)
    assert mirrored.flags.c_contiguous


def first_display_matrix(data: bytes) -> tuple[int, ...] | None:
    """The DISPLAYMATRIX side data of a clip's first decoded frame, read with PyAV directly."""
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
        side_data = frame.side_data.get("DISPLAYMATRIX")
        return None if side_data is None else tuple(np.frombuffer(bytes(side_data), dtype=np.int32).tolist())


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("mirror", [False, True])
def test_a_display_matrix_is_shown_as_the_exif_orientation_it_maps_to(rotation: int, mirror: bool) -> None:
    clip = make_clip(1, lossless=True, rotation=rotation, mirror=mirror)
    orientation = display_orientation(first_display_matrix(clip))
    assert (orientation in (2, 4, 5, 7)) == mirror  # EXIF's mirrored orientations
    # Pillow's own rule for that EXIF orientation, on the unturned frame, gives the frame decoded here.
    photo = Image.fromarray(frames_of(make_clip(1, lossless=True))[0].rgb)
    exif = photo.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG", exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(buffer)))
    assert np.array_equal(frames_of(clip)[0].rgb, upright)


def test_turns_between_quarter_turns_are_rounded_and_odd_matrices_ignored() -> None:
    assert first_display_matrix(make_clip(1)) is None and display_orientation(None) == 1
    assert display_orientation([0] * 8 + [1 << 30]) == 1  # a degenerate matrix: shown as stored
    for degrees, mirror, orientation in ((30, False, 1), (60, False, 8), (-100, True, 5), (190, True, 4)):
        matrix = first_display_matrix(make_clip(1, rotation=degrees, mirror=mirror))
        assert display_orientation(matrix) == orientation, (degrees, mirror, matrix)


def test_sampling_fps_start_end_and_max_frames() -> None:
    clip = make_clip(10, fps=10)  # frames at 0.0, 0.1, ..., 0.9 s
    assert [f.time_s for f in frames_of(clip, Sampling(fps=5))] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert [f.time_s for f in frames_of(clip, Sampling(start=0.3, end=0.6))] == pytest.approx([0.3, 0.4, 0.5])
    assert [f.index for f in frames_of(clip, Sampling(start=0.5))] == [0, 1, 2, 3, 4]
    assert len(frames_of(clip, Sampling(max_frames=3))) == 3
    # asking for more frames a second than the clip has gives each of its frames once
    assert len(frames_of(clip, Sampling(fps=30))) == 10


@pytest.mark.parametrize("sampling", [Sampling(fps=0), Sampling(fps=float("nan")), Sampling(fps=1e9),
                                      Sampling(start=-1), Sampling(start=float("inf")), Sampling(start=2, end=1),
                                      Sampling(max_frames=0)])
def test_absurd_sampling_is_refused(sampling: Sampling) -> None:
    with pytest.raises(VideoSelectionError) as caught:
        frames_of(make_clip(2), sampling)
    assert caught.value.status == 422 and caught.value.code == "invalid_video_selection"


def test_a_start_past_the_end_is_refused_from_the_header() -> None:
    with pytest.raises(VideoSelectionError, match="past the clip's end"):
        probe_video(make_clip(3, fps=10), Sampling(start=5.0), LIMITS)


def test_limits() -> None:
    clip = make_clip(10, fps=10)
    with pytest.raises(VideoTooLargeError, match="SHARP_VIDEO_MAX_FRAMES") as caught:
        probe_video(clip, Sampling(), VideoLimits(60.0, 4, 10**7))
    assert caught.value.status == 413
    assert len(frames_of(clip, Sampling(max_frames=4), VideoLimits(60.0, 4, 10**7))) == 4
    assert len(frames_of(clip, Sampling(fps=4), VideoLimits(60.0, 4, 10**7))) == 4
    with pytest.raises(VideoTooLargeError, match="SHARP_VIDEO_MAX_DURATION_S"):
        probe_video(clip, Sampling(), VideoLimits(0.5, 50, 10**7))
    with pytest.raises(VideoTooLargeError, match="SHARP_VIDEO_MAX_PIXELS"):
        probe_video(clip, Sampling(), VideoLimits(60.0, 50, 160 * 96 - 1))


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(("make", "error", "code"), [
    (lambda: b"", UnsupportedVideoError, "unsupported_video"),
    (lambda: b"this is plain text, not a clip at all" * 20, UnsupportedVideoError, "unsupported_video"),
    (png_bytes, UnsupportedVideoError, "unsupported_video"),
    (audio_only, UnsupportedVideoError, "unsupported_video"),
    (lambda: make_clip(5)[:600], CorruptVideoError, "corrupt_video"),
    (lambda: make_clip(5)[:40], CorruptVideoError, "corrupt_video"),
])
def test_bad_clips_raise_video_errors(make, error: type, code: str) -> None:
    with pytest.raises(error) as caught:
        frames_of(make())
    assert caught.value.code == code and 400 <= caught.value.status < 500


def test_detection_by_content_and_name(tmp_path) -> None:
    clip = make_clip(1)
    assert looks_like_video(clip[:1024]) and looks_like_video(make_clip(1, container="matroska")[:1024])
    assert not looks_like_video(png_bytes())
    heic_like = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    assert not looks_like_video(heic_like)
    (tmp_path / "clip.bin").write_bytes(clip)
    (tmp_path / "photo.png").write_bytes(png_bytes())
    assert is_video_path(tmp_path / "clip.bin") and not is_video_path(tmp_path / "photo.png")
    assert is_video_path(tmp_path / "missing.MOV")


def test_decoding_keeps_no_frame_behind() -> None:
    """Memory does not grow with the clip's length: no decoded frame outlives its turn, even with the garbage
    collector off (reading a frame's side data ties it in a reference cycle; it is read from the first only)."""
    import gc

    clip = make_clip(24, rotation=90, mirror=True)
    gc.collect()
    gc.disable()
    try:
        for _ in read_frames(clip, Sampling(), LIMITS):
            pass
        alive = sum(type(thing) is av.VideoFrame for thing in gc.get_objects())
    finally:
        gc.enable()
    assert alive <= 1, f"{alive} decoded frames still held"


def test_reading_from_a_later_frame_gives_the_tail_of_the_same_selection() -> None:
    clip, sampling = make_clip(6, fps=10), Sampling(fps=5, start=0.05)
    every = list(read_frames(clip, sampling, LIMITS))
    tail = list(read_frames(clip, sampling, LIMITS, first=1))
    assert len(every) == 3 and [f.index for f in tail] == [1, 2]
    for ours, theirs in zip(tail, every[1:], strict=True):
        assert ours.time_s == theirs.time_s and np.array_equal(ours.rgb, theirs.rgb)
    assert list(read_frames(clip, sampling, LIMITS, first=5)) == []  # past the selection's end: nothing, no error


# ---------------------------------------------------- clips that lie (issue 28): checked from the frames too


def test_a_frame_larger_than_the_header_says_is_refused_before_it_is_allocated() -> None:
    """An MJPEG clip whose header says 16x16 and whose second frame is 16,000 x 16,000 (a real, 3 MB frame):
    FFmpeg is given the limit, so the frame is refused (413) without its 256 MB of pixels, let alone 768 MB of RGB."""
    import resource

    clip = h.mjpeg_clip([(16, 16), (16_000, 16_000), (16, 16)])
    assert probe_video(clip, Sampling(), LIMITS).width == 16  # the header passes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    taken = []
    with pytest.raises(VideoTooLargeError, match="SHARP_VIDEO_MAX_PIXELS") as caught:
        for frame in read_frames(clip, Sampling(), LIMITS):
            taken.append(frame.index)
    assert caught.value.status == 413 and taken == [0]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb  # the frame alone would be 256 MB


def test_a_frame_over_the_limit_within_ffmpegs_is_refused_before_its_conversion() -> None:
    limits = VideoLimits(60.0, 50, 64 * 64)
    with pytest.raises(VideoTooLargeError, match="SHARP_VIDEO_MAX_PIXELS"):
        frames_of(h.mjpeg_clip([(16, 16), (80, 80)]), limits=limits)


def test_a_size_change_mid_clip_is_scaled_to_the_first_frames_size_or_refused_for_another_shape() -> None:
    frames = frames_of(h.mjpeg_clip([(32, 16), (64, 32), (16, 8)]))
    assert [frame.rgb.shape for frame in frames] == [(16, 32, 3)] * 3
    with pytest.raises(CorruptVideoError, match=r"Frame 3 .* another shape than the first frame's 32x16") as caught:
        frames_of(h.mjpeg_clip([(32, 16), (64, 32), (16, 16)]))
    assert caught.value.status == 400


def test_an_unknown_codec_is_unsupported_from_the_header() -> None:
    with pytest.raises(UnsupportedVideoError, match="codec is unknown") as caught:
        probe_video(h.clip_unknown_codec(), Sampling(), LIMITS)
    assert caught.value.status == 415


@pytest.mark.parametrize("sampling", [Sampling(start=1e300), Sampling(start=1e20), Sampling(end=1e300),
                                      Sampling(max_frames=10**20), Sampling(max_frames=2**63)])
def test_times_and_counts_past_any_clip_are_refused(sampling: Sampling) -> None:
    with pytest.raises(VideoSelectionError):
        frames_of(h.clip_without_duration(make_clip(3, container="matroska")), sampling)


def test_a_late_start_in_a_clip_without_a_duration_selects_nothing() -> None:
    clip = h.clip_without_duration(make_clip(3, container="matroska"))
    assert probe_video(clip, Sampling(), LIMITS).duration_s is None
    with pytest.raises(VideoSelectionError, match="No frame"):
        frames_of(clip, Sampling(start=600_000.0))
