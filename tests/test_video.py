"""VideoSource: fps sampling by timestamp, frame cap, smart_resize, blocks, codecs and errors."""

import infinipot_mlx  # noqa: F401  (must precede any mlx import)

import math

import numpy as np
import pytest

from infinipot_mlx.video import FrameBlock, VideoError, VideoSource, pad_block, smart_resize
from videos import (
    CODECS, corrupt_video, garbage_after_header, moving_shapes_frames, moving_shapes_video,
    non_video_file, zero_frame_video,
)

SMALL = {"min_pixels": 56 * 56, "max_pixels": 224 * 224}


def expected_samples(n_frames: int, src_fps: float, fps: float) -> list[int]:
    """Indices of the first frame at or after each k / fps (what VideoSource takes)."""
    taken, due = [], 0.0
    for i in range(n_frames):
        if i / src_fps + 1e-6 >= due:
            taken.append(i)
            due = (math.floor(i / src_fps * fps + 1e-6) + 1) / fps
    return taken


def test_container_facts(moving_shapes_mp4):
    src = VideoSource(moving_shapes_mp4, fps=2.0, **SMALL)
    assert src.kind == "file" and src.source_fps == 10.0 and src.frame_count == 30
    assert src.duration == pytest.approx(3.0)
    assert src.source_size == (112, 168) and src.frame_size == (112, 168)
    src.close()


@pytest.mark.parametrize("fps", [2.0, 3.0, 4.0, 10.0, 25.0])
def test_sampling_at_fps_gives_expected_frames_and_timestamps(moving_shapes_mp4, fps):
    frames, timestamps = VideoSource(moving_shapes_mp4, fps=fps, **SMALL).read()
    indices = expected_samples(30, 10.0, fps)
    assert frames.shape == (len(indices), 112, 168, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(timestamps, np.array(indices) / 10.0)
    if fps <= 10.0:  # one frame per 1/fps slot: the k-th lies in [k/fps, (k+1)/fps)
        slots = np.arange(len(timestamps)) / fps
        assert np.all(timestamps >= slots - 1e-6) and np.all(timestamps < slots + 1 / fps)


def test_two_fps_from_ten_takes_every_fifth_frame(moving_shapes_mp4):
    frames, timestamps = VideoSource(moving_shapes_mp4, fps=2.0, **SMALL).read()
    np.testing.assert_allclose(timestamps, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    original = moving_shapes_frames(30)[::5, ..., ::-1]  # BGR -> RGB
    assert np.abs(frames.astype(int) - original).mean() < 6  # lossy mp4v, same pictures


def test_fps_none_keeps_every_frame_and_max_frames_caps(moving_shapes_mp4):
    frames, _ = VideoSource(moving_shapes_mp4, fps=None, **SMALL).read()
    assert len(frames) == 30
    frames, timestamps = VideoSource(moving_shapes_mp4, fps=2.0, max_frames=4, **SMALL).read()
    assert len(frames) == 4 and timestamps[-1] == pytest.approx(1.5)


@pytest.mark.parametrize("height,width,min_pixels,max_pixels", [
    (112, 168, 3136, 50176), (100, 150, 3136, 50176), (480, 640, 3136, 50176),
    (30, 40, 12544, 50176), (1080, 1920, 3136, 602112), (56, 800, 3136, 50176),
])
def test_resize_to_multiples_of_28_within_pixel_limits(height, width, min_pixels, max_pixels):
    h, w = smart_resize(height, width, 28, min_pixels, max_pixels)
    assert h % 28 == 0 and w % 28 == 0
    assert min_pixels <= h * w <= max_pixels
    assert abs(h / w - height / width) / (height / width) < 0.35


def test_smart_resize_matches_transformers():
    qwen = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    sizes = [(112, 168), (100, 150), (480, 640), (30, 40), (1080, 1920), (77, 333), (28, 2000)]
    for height, width in sizes:  # (28, 2000): like upstream, may exceed max_pixels
        assert smart_resize(height, width, 28, 3136, 50176) == qwen.smart_resize(
            height, width, 28, 3136, 50176)


def test_frames_are_resized_and_rgb(video_dir):
    path = moving_shapes_video(video_dir / "big.avi", n=6, fps=6.0, fourcc="MJPG",
                               height=240, width=320)
    src = VideoSource(path, fps=None, **SMALL)
    h, w = src.frame_size
    frames, _ = src.read()
    assert frames.shape == (6, h, w, 3) and (h, w) == smart_resize(240, 320, 28, **SMALL)
    disc = frames[0, int(h / 3), :, :].astype(int)  # the red disc's row: red dominates somewhere
    assert (disc[:, 0] - disc[:, 2]).max() > 100


def test_fixed_size_for_llava(moving_shapes_mp4):
    frames, _ = VideoSource(moving_shapes_mp4, fps=1.0, size=(98, 98)).read()
    assert frames.shape == (3, 98, 98, 3)


def test_blocks_with_partial_last_block_and_even_padding(moving_shapes_mp4):
    src = VideoSource(moving_shapes_mp4, fps=3.0, **SMALL)  # 9 frames at 0, 0.4, 0.7, .., 2.7
    blocks = list(src.blocks(4, pad_multiple=2))
    assert [len(b) for b in blocks] == [4, 4, 2] and [b.n_real for b in blocks] == [4, 4, 1]
    assert [b.start for b in blocks] == [0, 4, 8]
    assert all(isinstance(b, FrameBlock) and b.frames.shape[1:] == (112, 168, 3) for b in blocks)
    last = blocks[-1]
    np.testing.assert_array_equal(last.frames[1], last.frames[0])
    assert last.timestamps[1] == last.timestamps[0]
    _, timestamps = VideoSource(moving_shapes_mp4, fps=3.0, **SMALL).read()
    np.testing.assert_allclose(np.concatenate([b.timestamps[: b.n_real] for b in blocks]), timestamps)


def test_pad_block_keeps_even_blocks():
    frames = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    padded, ts = pad_block(frames, np.arange(4.0), 2)
    assert padded is frames and len(ts) == 4


def test_second_pass_over_a_file_reopens(moving_shapes_mp4):
    src = VideoSource(moving_shapes_mp4, fps=2.0, **SMALL)
    first, _ = src.read()
    second, _ = src.read()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("fourcc", sorted(CODECS))
def test_each_codec_opens(video_dir, fourcc):
    path = moving_shapes_video(video_dir / f"codec_{fourcc}{CODECS[fourcc]}", n=12, fps=6.0,
                               fourcc=fourcc)
    frames, timestamps = VideoSource(path, fps=2.0, **SMALL).read()
    assert frames.shape == (4, 112, 168, 3)
    np.testing.assert_allclose(timestamps, [0.0, 0.5, 1.0, 1.5])


def test_digit_string_is_a_camera_index():
    with pytest.raises(VideoError, match="camera 97"):
        VideoSource("97")


@pytest.mark.parametrize("make,match", [
    (lambda d, ok: d / "missing.mp4", "not found"),
    (lambda d, ok: non_video_file(d / "notes.mp4"), "could not open|no frame"),
    (lambda d, ok: corrupt_video(d / "cut.mp4", ok), "could not open|no frame"),
    (lambda d, ok: garbage_after_header(d / "garbage.avi", ok), "could not open|no frame"),
    (lambda d, ok: zero_frame_video(d / "empty.mp4"), "could not open|no frame"),
    (lambda d, ok: zero_frame_video(d / "empty.avi", "MJPG"), "could not open|no frame"),
    (lambda d, ok: d, "not a file"),
])
def test_bad_sources_raise_video_error(video_dir, moving_shapes_mp4, tmp_path, make, match):
    path = make(tmp_path, moving_shapes_mp4)
    with pytest.raises(VideoError, match=match) as info:
        VideoSource(path)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_bad_arguments_raise_value_error(moving_shapes_mp4):
    with pytest.raises(ValueError, match="fps"):
        VideoSource(moving_shapes_mp4, fps=0)
    with pytest.raises(ValueError, match="max_frames"):
        VideoSource(moving_shapes_mp4, max_frames=0)
    with pytest.raises(ValueError, match="block size"):
        next(VideoSource(moving_shapes_mp4).blocks(0))
