"""VideoSource: fps sampling by timestamp, frame cap, smart_resize, blocks, codecs and errors;
real (VFR) timestamps, odd paths, frame sizes, a long video, streams and the no-camera message."""

import infinipot_mlx  # noqa: F401  (must precede any mlx import)

import functools
import http.server
import math
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from infinipot_mlx.errors import UserError
from infinipot_mlx.contract.pixels import smart_resize
from infinipot_mlx.video.source import FrameBlock, VideoError, VideoSource, pad_block
from videos import (
    CODECS, corrupt_video, garbage_after_header, h264_encoder, h264_video, index_level,
    long_low_res_video, moving_shapes_frames, moving_shapes_video, non_video_file, sized_video,
    vfr_video, zero_frame_video,
)

SMALL = {"min_pixels": 56 * 56, "max_pixels": 224 * 224}
OPENCV_NOISE = ("WARN", "ERROR", "VIDEOIO", "OpenCV", "cap_", "global ")


def expected_from_times(times, fps: float) -> list[int]:
    """Indices of the first frame at or after each k / fps, given each frame's time."""
    taken, due = [], 0.0
    for i, t in enumerate(times):
        if t + 1e-6 >= due:
            taken.append(i)
            due = (math.floor(t * fps + 1e-6) + 1) / fps
    return taken


def expected_samples(n_frames: int, src_fps: float, fps: float) -> list[int]:
    """Indices of the first frame at or after each k / fps (what VideoSource takes)."""
    return expected_from_times(np.arange(n_frames) / src_fps, fps)


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120)


def test_pyav_has_an_h264_encoder():
    """PyAV is a dev dependency: the VFR and H.264 tests below must run, never skip."""
    assert h264_encoder() is not None


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
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as qwen  # a dev dependency
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
    (lambda d, ok: d / "two\nlines.mp4", "not found"),
])
def test_bad_sources_raise_video_error(video_dir, moving_shapes_mp4, tmp_path, make, match):
    path = make(tmp_path, moving_shapes_mp4)
    with pytest.raises(VideoError, match=match) as info:
        VideoSource(path)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_bad_arguments_raise_value_error(moving_shapes_mp4):
    with pytest.raises(ValueError, match="fps"):
        VideoSource(moving_shapes_mp4, fps=0)
    with pytest.raises(ValueError, match="max_frames"):
        VideoSource(moving_shapes_mp4, max_frames=0)
    with pytest.raises(ValueError, match="block size"):
        next(VideoSource(moving_shapes_mp4).blocks(0))


# -- unusual paths ---------------------------------------------------------------------------

def test_non_utf8_name_opens_and_plays(moving_shapes_mp4, tmp_path):
    """Undecodable name bytes (surrogate escapes in a str) used to SIGSEGV inside OpenCV."""
    raw = os.path.join(os.fsencode(tmp_path), b"clip \xff\xfe\x80.mp4")
    shutil.copyfile(moving_shapes_mp4, raw)  # Linux filesystems take any bytes as a name
    out = tmp_path / "frames.npy"
    code = ("import sys, numpy as np\nfrom infinipot_mlx.video.source import VideoSource\n"
            "src = VideoSource(sys.argv[1], fps=None, min_pixels=3136, max_pixels=50176)\n"
            "frames, ts = src.read()\n"
            "np.save(sys.argv[2], frames); print(ts.tolist())")
    child = run_python(code, raw, out)  # argv bytes: the child gets a surrogate-escaped str
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
    frames, timestamps = VideoSource(moving_shapes_mp4, fps=None, **SMALL).read()
    np.testing.assert_array_equal(np.load(out), frames)
    np.testing.assert_allclose(eval(child.stdout), timestamps)  # a printed list of floats


def test_non_utf8_alias_lives_in_a_private_folder_until_close(moving_shapes_mp4, tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"\xff.mp4")
    shutil.copyfile(moving_shapes_mp4, raw)
    temp = tmp_path / "temp"
    temp.mkdir()
    code = ("import os, sys, tempfile\nfrom infinipot_mlx.video.source import VideoSource\n"
            "temp = tempfile.gettempdir()\n"
            "def show(src):\n"
            "    n = len(src.read()[0])\n"  # read() closes the capture at the end
            "    print(n, [os.listdir(os.path.join(temp, d)) for d in os.listdir(temp)])\n"
            "src = VideoSource(sys.argv[1], fps=2.0, max_frames=1)\n"
            "(folder,) = [os.path.join(temp, d) for d in os.listdir(temp)]\n"
            "print(oct(os.stat(folder).st_mode & 0o777), os.listdir(folder))\n"
            "show(src)\nshow(src)\n"  # a second pass makes a new link
            "src = VideoSource(os.fsencode(sys.argv[1]))\n")  # bytes work; left open at exit
    child = subprocess.run([sys.executable, "-c", code, raw], capture_output=True, timeout=120,
                           env=dict(os.environ, TMPDIR=str(temp)))
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
    assert child.stdout.decode().splitlines() == ["0o700 ['video.mp4']", "1 []", "1 []"]
    assert not any(temp.iterdir())  # the link left open at exit is removed too


@pytest.mark.parametrize("name", [
    "with space.mp4", "café.mp4", "日本/ビデオ 映像.mp4", "-leading-dash.mp4",
    "x" * 240 + ".mp4",
    "/".join(["d" * 200] * 18) + "/deep.mp4",  # a path of about 3,600 bytes
])
def test_unusual_paths_open(moving_shapes_mp4, tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(moving_shapes_mp4, path)
    frames, timestamps = VideoSource(str(path), fps=2.0, **SMALL).read()
    expected, _ = VideoSource(moving_shapes_mp4, fps=2.0, **SMALL).read()
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_allclose(timestamps, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_tilde_expands_to_home(moving_shapes_mp4, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copyfile(moving_shapes_mp4, tmp_path / "home video.mp4")
    assert VideoSource("~/home video.mp4", fps=2.0, **SMALL).frame_count == 30


# -- no camera: one line, no OpenCV noise ---------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux") or os.path.exists("/dev/video0"),
                    reason="needs a Linux machine without a camera")
@pytest.mark.parametrize("first", ["", "import cv2"])  # cv2 imported before us, or not
def test_no_camera_is_one_line_without_opencv_noise(first):
    code = (f"{first}\nimport sys\nfrom infinipot_mlx.video.source import VideoError, VideoSource\n"
            "try:\n    VideoSource(0)\nexcept VideoError as err:\n    print(err, file=sys.stderr)")
    out = run_python(code)
    lines = out.stderr.decode().strip().splitlines()
    assert out.returncode == 0 and len(lines) == 1, lines
    assert "camera 0" in lines[0] and not any(word in lines[0] for word in OPENCV_NOISE)


@pytest.mark.parametrize("first", ["", "import cv2"])
def test_importing_video_silences_opencv_logs(first):
    """OpenCV's failed camera open logs a dozen lines unless silenced (index 97: no camera)."""
    code = (f"{first}\nimport cv2\nimport infinipot_mlx.video.source\n"
            "print(cv2.VideoCapture(97).isOpened())")
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.decode().strip() == "False"
    assert out.stderr.decode().strip() == ""


def test_negative_camera_index_is_refused():  # OpenCV 5.0 crashes (SIGSEGV) on -1, no camera
    code = ("from infinipot_mlx.video.source import VideoError, VideoSource\n"
            "try:\n    VideoSource(-1)\nexcept VideoError as err:\n    print(err)")
    out = run_python(code)
    assert out.returncode == 0 and "negative" in out.stdout.decode(), out


# -- real timestamps ------------------------------------------------------------------------

@pytest.mark.parametrize("codec,ext,start", [
    (None, ".mp4", 0.0), (None, ".mov", 0.5), ("mpeg4", ".mkv", 0.0), ("mpeg4", ".mp4", 0.25),
])
def test_vfr_timestamps_are_the_true_pts(video_dir, codec, ext, start):
    path, truth = vfr_video(video_dir / f"vfr_{codec}_{start}{ext}", codec=codec, start=start)
    src = VideoSource(path, fps=None, **SMALL)
    frames, timestamps = src.read()
    assert len(frames) == len(truth) == 24 and timestamps[0] == 0.0
    assert np.abs(timestamps - truth).max() < 1e-3
    index_over_fps = np.arange(24) / src.source_fps  # what the old timestamps were
    assert np.abs(index_over_fps - truth).max() > 0.05
    assert src.duration == pytest.approx(truth[-1], abs=0.5)  # an estimate for VFR


def test_vfr_pause_keeps_its_length(video_dir):
    intervals = [1 / 30] * 5 + [3.0] + [1 / 30] * 6
    path, truth = vfr_video(video_dir / "pause.mp4", intervals=intervals, n=13)
    _, timestamps = VideoSource(path, fps=None, **SMALL).read()
    assert np.abs(timestamps - truth).max() < 1e-3
    assert timestamps[6] - timestamps[5] == pytest.approx(3.0, abs=1e-3)


def test_two_fps_from_vfr_picks_frames_by_real_time(video_dir):
    """Bursts of 25 fps and 0.6 s pauses: the k-th sample is the first frame at or after k/2 s."""
    path, truth = vfr_video(video_dir / "bursts.mp4", intervals=(0.04,) * 4 + (0.6,), n=25)
    every, _ = VideoSource(path, fps=None, **SMALL).read()
    src = VideoSource(path, fps=2.0, **SMALL)
    frames, timestamps = src.read()
    picks = expected_from_times(truth, 2.0)
    assert picks != expected_from_times(np.arange(25) / src.source_fps, 2.0)
    np.testing.assert_allclose(timestamps, truth[picks], atol=1e-3)
    np.testing.assert_array_equal(frames, every[picks])  # the very frames, as decoded


@pytest.mark.parametrize("fourcc,fps", [
    ("mp4v", 10.0), ("mp4v", 30000 / 1001), ("MJPG", 6.0), ("MJPG", 29.97), ("XVID", 25.0),
    ("h264", 10.0), ("h264", 30000 / 1001),
])
def test_cfr_timestamps_are_index_over_fps(video_dir, fourcc, fps):
    path = video_dir / f"cfr_{fourcc}_{fps:.3f}{'.avi' if fourcc in ('MJPG', 'XVID') else '.mp4'}"
    if fourcc == "h264":
        h264_video(path, n=40, fps=fps)
    else:
        moving_shapes_video(path, n=40, fps=fps, fourcc=fourcc)
    src = VideoSource(path, fps=None, **SMALL)
    _, timestamps = src.read()
    assert src.source_fps == pytest.approx(fps, rel=1e-4) and len(timestamps) == 40
    assert np.abs(timestamps - np.arange(40) / src.source_fps).max() < 1e-3


def test_stream_over_http_uses_the_pts(video_dir):
    path, truth = vfr_video(video_dir / "served.mp4")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(video_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = VideoSource(f"http://127.0.0.1:{server.server_port}/served.mp4", fps=None, **SMALL)
        assert src.kind == "stream"
        _, timestamps = src.read()
    finally:
        server.shutdown()
        server.server_close()
    assert np.abs(timestamps - truth).max() < 1e-3


# -- sizes, codecs, length ------------------------------------------------------------------

@pytest.mark.parametrize("width,height,fourcc", [
    (3840, 2160, "mp4v"), (1920, 1080, "mp4v"), (1280, 720, "MJPG"), (640, 480, "mp4v"),
    (1080, 1920, "mp4v"), (176, 144, "MJPG"),
])
def test_frame_sizes(video_dir, width, height, fourcc):
    path = sized_video(video_dir / f"size_{width}x{height}{CODECS[fourcc]}", width, height, n=3,
                       fps=10.0, fourcc=fourcc)
    src = VideoSource(path, fps=None)
    frames, timestamps = src.read()
    h, w = smart_resize(height, width)
    assert src.source_size == (height, width) and src.frame_size == (h, w)
    assert frames.shape == (3, h, w, 3) and (h > w) == (height > width)
    np.testing.assert_allclose(timestamps, [0.0, 0.1, 0.2])
    levels = frames[:, h // 2, : w // 8].mean(axis=(1, 2))  # the left quarter's grey
    assert np.abs(levels - [index_level(i) for i in range(3)]).max() < 6


def test_h264_opens(video_dir):
    frames, timestamps = VideoSource(h264_video(video_dir / "h264.mp4", n=12, fps=6.0), fps=2.0,
                                     **SMALL).read()
    original = moving_shapes_frames(12)[::3, ..., ::-1]  # BGR -> RGB
    assert frames.shape == (4, 112, 168, 3) and np.abs(frames.astype(int) - original).mean() < 6
    np.testing.assert_allclose(timestamps, [0.0, 0.5, 1.0, 1.5])


def test_ten_minute_low_res_video(video_dir):
    path = long_low_res_video(video_dir / "long.mp4", minutes=10, fps=5.0)
    src = VideoSource(path, fps=2.0, **SMALL)
    assert src.frame_count == 3000 and src.duration == pytest.approx(600.0)
    timestamps = np.array([t for t, _ in src])
    np.testing.assert_allclose(timestamps, np.array(expected_samples(3000, 5.0, 2.0)) / 5.0)
    assert len(timestamps) == 1200 and timestamps[-1] == pytest.approx(599.6)
