"""Test videos: moving shapes, a static scene with short events, any frame size, long low-res,
H.264 and variable frame rate (PyAV), and broken files.

Every generator is deterministic and returns the path it wrote (vfr_video also its true
timestamps). Frames are BGR for OpenCV; VideoSource returns RGB. Codecs that this OpenCV build
writes: mp4v (.mp4), MJPG and XVID (.avi). H.264 and VFR need PyAV (`pip install av`, in the
dev extras); its wheels bundle libx264.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

CODECS = {"mp4v": ".mp4", "MJPG": ".avi", "XVID": ".avi"}
H264_ENCODERS = ("libx264", "libopenh264", "h264_v4l2m2m")  # PyAV encoders, preferred first
VFR_CLOCK = 30000  # ticks per second of vfr_video's pts


def _open_writer(path: Path, width: int, height: int, fps: float, fourcc: str) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"this OpenCV build cannot write {fourcc} to {path}")
    return writer


def write_frames(path: str | Path, frames: Iterable[np.ndarray], size: tuple[int, int],
                 fps: float, fourcc: str = "mp4v") -> Path:
    """Write BGR uint8 frames (H, W, 3), one at a time, with size=(H, W); returns the path."""
    path = Path(path)
    writer = _open_writer(path, size[1], size[0], fps, fourcc)
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: float, fourcc: str = "mp4v") -> Path:
    """Write BGR uint8 frames (F, H, W, 3) to `path` with the given codec; returns the path."""
    return write_frames(path, frames, frames.shape[1:3], fps, fourcc)


def moving_shapes_frames(n: int, height: int = 112, width: int = 168) -> np.ndarray:
    """(n, H, W, 3) BGR: a red disc moving right, a green square moving down, on grey."""
    frames = np.full((n, height, width, 3), 60, np.uint8)
    for i, frame in enumerate(frames):
        x = int((i * 7) % (width - 20)) + 10
        y = int((i * 5) % (height - 24))
        cv2.circle(frame, (x, height // 3), 9, (40, 40, 230), -1)
        cv2.rectangle(frame, (width // 2, y), (width // 2 + 20, y + 20), (40, 200, 40), -1)
        cv2.putText(frame, str(i % 10), (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1)
    return frames


def static_events_frames(n: int, events: tuple[int, ...] = (10, 25), length: int = 3,
                         height: int = 112, width: int = 112) -> np.ndarray:
    """(n, H, W, 3) BGR: a fixed textured scene; a bright square shows for `length` frames at
    each index in `events` (a static scene with short events, where TaR should keep them)."""
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (7, 7), 0)
    frames = np.repeat(scene[None], n, axis=0)
    for start in events:
        for i in range(start, min(n, start + length)):
            cv2.rectangle(frames[i], (width // 4, height // 4), (width // 2, height // 2),
                          (255, 255, 255), -1)
    return frames


def moving_shapes_video(path: str | Path, n: int = 30, fps: float = 10.0, fourcc: str = "mp4v",
                        height: int = 112, width: int = 168) -> Path:
    """Write moving_shapes_frames(n, height, width) at `fps` with `fourcc`."""
    return write_video(path, moving_shapes_frames(n, height, width), fps, fourcc)


def static_events_video(path: str | Path, n: int = 40, fps: float = 4.0, **kwargs) -> Path:
    """Write static_events_frames(n, **kwargs) as mp4v at `fps`."""
    return write_video(path, static_events_frames(n, **kwargs), fps, "mp4v")


def corrupt_video(path: str | Path, source: str | Path) -> Path:
    """The first third of `source`'s bytes (an mp4 cut before its index): unreadable."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])
    return Path(path)


def garbage_after_header(path: str | Path, source: str | Path, keep: int = 512) -> Path:
    """`source`'s first `keep` bytes, then random bytes of the original length: corrupt."""
    data = Path(source).read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, len(data) - keep, dtype=np.uint8).tobytes()
    Path(path).write_bytes(data[:keep] + noise)
    return Path(path)


def non_video_file(path: str | Path) -> Path:
    """A text file with a video extension."""
    Path(path).write_text("this is not a video\n" * 20)
    return Path(path)


def zero_frame_video(path: str | Path, fourcc: str = "mp4v") -> Path:
    """A container opened and closed with no frame written."""
    return write_video(path, np.zeros((0, 112, 112, 3), np.uint8), 10.0, fourcc)


def index_level(i: int) -> int:
    """The grey level that frame i's left quarter has in sized, long and VFR videos (28 levels)."""
    return 16 + 8 * (i % 28)


def _bar_frames(n: int, height: int, width: int, step: int = 0) -> Iterable[np.ndarray]:
    """n BGR frames (H, W, 3): left quarter at index_level(i), a white bar moving right on a
    horizontal gradient. Cheap at any size (one copy and two slice writes a frame)."""
    ramp = np.linspace(40, 200, width, dtype=np.float32).astype(np.uint8)
    base = np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2)
    bar, quarter = max(2, width // 16), max(1, width // 4)
    step = step or max(1, width // 40)
    for i in range(n):
        frame = base.copy()
        frame[:, :quarter] = index_level(i)
        x = quarter + (i * step) % max(1, width - quarter - bar)
        frame[:, x:x + bar] = 255
        yield frame


def sized_video(path: str | Path, width: int, height: int, n: int = 6, fps: float = 10.0,
                fourcc: str = "mp4v") -> Path:
    """n frames of width x height (e.g. 3840x2160, 1080x1920 vertical, 176x144) with a moving
    bar and frame i's left quarter at index_level(i)."""
    return write_frames(path, _bar_frames(n, height, width), (height, width), fps, fourcc)


def long_low_res_video(path: str | Path, minutes: float = 10.0, fps: float = 5.0,
                       width: int = 176, height: int = 144, fourcc: str = "mp4v") -> Path:
    """A long low-resolution video (default 10 min of 176x144 at 5 fps: 3000 frames, ~2 s)."""
    n = int(round(minutes * 60 * fps))
    return write_frames(path, _bar_frames(n, height, width, step=3), (height, width), fps, fourcc)


def h264_encoder() -> str | None:
    """The first H.264 encoder PyAV has (libx264 in its wheels), or None (or no PyAV)."""
    try:
        import av
    except ImportError:
        return None
    for name in H264_ENCODERS:
        try:
            av.Codec(name, "w")
        except Exception:  # av.codec.codec.UnknownCodecError, not exported the same in all versions
            continue
        return name
    return None


def _write_pyav(path: Path, frames: Iterable[np.ndarray], pts: Iterable[int], time_base: Fraction,
                rate: Fraction, codec: str, size: tuple[int, int]) -> Path:
    """Encode BGR frames (H, W, 3) with PyAV at the given pts (in time_base units)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        for frame, t in zip(frames, pts):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
            picture.pts, picture.time_base = int(t), time_base
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return path


def h264_video(path: str | Path, n: int = 30, fps: float = 10.0, height: int = 112,
               width: int = 168) -> Path:
    """moving_shapes_frames(n, height, width) as constant-frame-rate H.264 (PyAV, B-frames on)."""
    codec = h264_encoder()
    if codec is None:
        raise RuntimeError("no H.264 encoder: install PyAV (`pip install av`)")
    rate = Fraction(fps).limit_denominator(1001)
    return _write_pyav(Path(path), moving_shapes_frames(n, height, width), range(n), 1 / rate,
                       rate, codec, (height, width))


def vfr_video(path: str | Path, intervals: Sequence[float] = (1 / 30, 1 / 10), n: int = 24,
              height: int = 120, width: int = 160, codec: str | None = None, start: float = 0.0
              ) -> tuple[Path, np.ndarray]:
    """A variable-frame-rate video: frame k+1 shows intervals[k % len(intervals)] seconds after
    frame k (a long interval is a pause). -> (path, (n,) true timestamps in seconds from 0).

    pts are on a 30 kHz clock (exact for multiples of 1 ms and of 1/30 s; MPEG-4 Part 2 takes
    no clock over 65535 Hz), the first at `start` seconds (the returned timestamps still start
    at 0). H.264 (B-frames) when PyAV has it, else MPEG-4 Part 2 (codec="mpeg4"). Frame i's
    left quarter is at index_level(i).
    """
    steps = [round(intervals[k % len(intervals)] * VFR_CLOCK) for k in range(n - 1)]
    pts = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    pts += round(start * VFR_CLOCK)
    codec = codec or h264_encoder() or "mpeg4"
    path = _write_pyav(Path(path), _bar_frames(n, height, width), pts, Fraction(1, VFR_CLOCK),
                       Fraction(30), codec, (height, width))
    return path, (pts - pts[0]) / VFR_CLOCK
