"""Frame sources for streaming: a video file, a camera index or a stream URL, through OpenCV.

VideoSource samples frames at a target fps by timestamp while it reads (it never decodes the
whole video into memory), caps the count, and resizes every frame once, here, so that the MLX
and the PyTorch backends see identical pixels. Frames come out RGB uint8.

Notation: F = frames in a block, H x W = resized frame size (multiples of `factor`), 3 = RGB.
Resizing follows Qwen2-VL's smart_resize (multiples of 28 within [min_pixels, max_pixels],
aspect ratio kept); `size=(H, W)` forces a fixed size instead (LLaVA-OV: the vision image_size).
Timestamps are seconds from the first frame, non-decreasing: each frame's own presentation
time for files and streams (right for variable frame rate, pauses, dropped frames), index /
source fps where the decoder gives none; cameras: the wall clock (see _FrameClock). File names
that are not valid UTF-8 open through an ASCII-named symlink (see _ascii_alias). OpenCV's and
FFmpeg's own log lines are silenced (set OPENCV_LOG_LEVEL to see OpenCV's).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# OpenCV's and FFmpeg's log lines ("can't open camera by index", "moov atom not found") would
# surround our one-line VideoError. The variables work if cv2 is not imported yet; setLogLevel
# covers the case where it is.
_QUIET = "OPENCV_LOG_LEVEL" not in os.environ
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..contract.pixels import smart_resize  # noqa: E402
from ..contract.specs import QWEN_VIDEO_MAX_PIXELS, QWEN_VIDEO_MIN_PIXELS  # noqa: E402

if _QUIET and hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

__all__ = ["VideoError", "VideoSource", "FrameBlock", "resize_frame", "pad_block"]

class VideoError(UserError):
    """A source that cannot be opened or read as a video; the message says what to do."""


@dataclass
class FrameBlock:
    """A block of consecutive sampled frames.

    frames: (F, H, W, 3) uint8 RGB.  timestamps: (F,) float64 seconds.
    n_real: frames that came from the source; the rest (padding) repeat the last real frame.
    start: sample index of the first frame (0 for the first frame of the source).
    """

    frames: np.ndarray
    timestamps: np.ndarray
    n_real: int
    start: int

    def __len__(self) -> int:
        return len(self.frames)


def resize_frame(bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV BGR (h, w, 3) -> RGB (H, W, 3) uint8: area filter to shrink, bicubic to grow."""
    height, width = size
    if bgr.shape[:2] != (height, width):
        shrink = height * width < bgr.shape[0] * bgr.shape[1]
        bgr = cv2.resize(bgr, (width, height),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pad_block(frames: np.ndarray, timestamps: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeat the last frame (and timestamp) until F is a multiple of `multiple` (Qwen: 2).

    (F, H, W, 3), (F,) -> (F', H, W, 3), (F',) with F' = ceil(F / multiple) * multiple.
    """
    missing = -len(frames) % multiple
    if missing == 0:
        return frames, timestamps
    frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
    timestamps = np.concatenate([timestamps, np.repeat(timestamps[-1:], missing)])
    return frames, timestamps


def _shown(text: str) -> str:
    """`text` for a one-line message: newlines, control characters, surrogates escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_source(source: str | bytes | int | Path) -> tuple[str | int, str]:
    """-> (what cv2.VideoCapture takes, kind) with kind in {"camera", "stream", "file"}."""
    if isinstance(source, bool):
        raise VideoError(f"video source {source!r} is not a path, a URL or a camera index.")
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return int(source), "camera"
    text = os.fsdecode(source) if isinstance(source, bytes) else str(source)
    if "://" in text:
        if not _utf8(text):
            raise VideoError(f"the URL {_shown(text)} is not valid UTF-8; percent-encode it.")
        return text, "stream"
    path = Path(text).expanduser()
    if not path.exists():
        raise VideoError(f"video file not found: {_shown(text)}; check the path.")
    if not path.is_file():
        raise VideoError(f"{_shown(text)} is not a file; pass a video file, a camera index or a URL.")
    return str(path), "file"


def _ascii_alias(path: str) -> tuple[str, str]:
    """-> (folder, link): a new private (0700) temporary folder holding `link`, a symlink to
    `path` named "video" + `path`'s suffix. For names that are not valid UTF-8: OpenCV's Python
    binding crashes (SIGSEGV) on a str it cannot encode (undecodable bytes of a name arrive as
    surrogate escapes, os.fsdecode)."""
    suffix = Path(path).suffix if Path(path).suffix.isascii() else ""
    folder = None
    try:
        folder = tempfile.mkdtemp(prefix="infinipot-video-")
        link = os.path.join(folder, "video" + suffix)
        os.symlink(os.fsencode(os.path.abspath(path)), os.fsencode(link))
    except (OSError, UnicodeError) as err:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise VideoError(f"cannot open {_shown(path)}: its name is not valid UTF-8 and no link "
                         f"to it could be made ({type(err).__name__}); rename the file, e.g. to "
                         f"video{suffix}.") from None
    return folder, link


def _open_capture(target: str | int, kind: str, alias: str | None = None) -> cv2.VideoCapture:
    """cv2.VideoCapture of `target` (through `alias`, a link to it, if given), or VideoError."""
    if kind == "camera" and target < 0:  # OpenCV 5.0 crashes (SIGSEGV) on -1 with no camera
        raise VideoError(f"camera index {target} is negative; pass 0 for the first camera.")
    if kind == "camera" and sys.platform.startswith("linux") and target < 100 \
            and not os.path.exists(f"/dev/video{target}"):
        raise VideoError(f"no camera {target}: /dev/video{target} does not exist; connect a "
                         f"camera, or pass a video file or a URL.")
    cap = cv2.VideoCapture(alias or target)
    if cap.isOpened():
        return cap
    cap.release()
    if kind == "camera":
        raise VideoError(f"could not open camera {target}; check that it is connected and not in use.")
    if kind == "stream":
        raise VideoError(f"could not open the stream {_shown(target)}; check the URL and the network.")
    raise VideoError(f"could not open {_shown(target)} as a video (not a video, corrupt, or an "
                     f"unsupported codec); re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`.")


def _positive(value: float) -> float | None:
    return value if value > 0 and math.isfinite(value) else None


class _FrameClock:
    """Seconds of each decoded frame after frame 0 (which is 0.0); never decreasing.

    Files and streams: the decoder's presentation time. CAP_PROP_POS_MSEC read right after
    grab() is the grabbed frame's own pts, with the stream's start time already removed
    (checked on variable-frame-rate H.264 with B-frames, MPEG-4 and MJPG; for constant frame
    rate it equals index / fps); frame 0's pts is subtracted as well. A frame without a usable
    pts (not finite, or not after the previous frame) is placed (index - i) / fps after the
    last frame i that had one, so a decoder that gives nothing yields index / fps; with no fps
    either, the wall clock. Cameras: the wall clock since frame 0 was read.
    """

    def __init__(self, cap: cv2.VideoCapture, kind: str, fps: float | None):
        self._cap, self._fps, self._wall = cap, fps, kind == "camera"
        self._start = time.monotonic()
        self._pts0 = None if self._wall else self._msec()
        self._last, self._anchor = 0.0, (0, 0.0)  # last timestamp; (index, t) of the last pts

    def _msec(self) -> float | None:
        value = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        return value if math.isfinite(value) else None

    def __call__(self, index: int) -> float:
        msec = None if self._wall or self._pts0 is None else self._msec()
        if msec is not None and (t := (msec - self._pts0) / 1000.0) > self._last:
            self._anchor = (index, t)
        elif self._fps is not None and not self._wall:
            t = self._anchor[1] + (index - self._anchor[0]) / self._fps
        else:
            t = time.monotonic() - self._start
        self._last = max(t, self._last)
        return self._last


class VideoSource:
    """Sampled, resized RGB frames from a video file, a camera index or a stream URL.

    Args:
        source: a file path (str, bytes or Path; `~` expanded), a camera index (int or digit
            string) or a URL ("rtsp://...").
        fps: target sampling rate in frames per second; None keeps every frame.
        max_frames: stop after this many sampled frames (None: until the source ends).
        min_pixels, max_pixels, factor: smart_resize limits (Qwen2.5-VL video processor).
        size: fixed (H, W) for every frame instead of smart_resize (e.g. LLaVA-OV 384x384).
    Raises:
        VideoError: missing, unreadable or empty source (raised here, at construction).
    """

    def __init__(self, source: str | bytes | int | Path, fps: float | None = 2.0,
                 max_frames: int | None = None, min_pixels: int = QWEN_VIDEO_MIN_PIXELS,
                 max_pixels: int = QWEN_VIDEO_MAX_PIXELS, factor: int = 28,
                 size: tuple[int, int] | None = None):
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive (or None for every frame), got {fps}.")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1 (or None), got {max_frames}.")
        self.source = source
        self.fps = fps
        self.max_frames = max_frames
        self._target, self.kind = _parse_source(source)
        self._limits = (factor, min_pixels, max_pixels)
        self._fixed_size = tuple(size) if size is not None else None
        self._unlink: weakref.finalize | None = None  # removes a non-UTF-8 name's ASCII link
        self._cap, self._first = self._open()
        self.source_size: tuple[int, int] = self._first.shape[:2]  # (h, w) as decoded
        self.frame_size: tuple[int, int] = self._output_size(*self.source_size)  # (H, W)

    @classmethod
    def for_model(cls, source, spec, fps: float | None = 2.0, max_frames: int | None = None) -> VideoSource:
        """A source within a model's video limits (a ModelSpec); a session's fit_frame_size
        then sets `frame_size` for its cap (StreamSession.open_video does both)."""
        return cls(source, fps=fps, max_frames=max_frames, min_pixels=spec.min_pixels,
                   max_pixels=spec.max_pixels, factor=spec.pixels_per_token, size=spec.frame_size)

    # -- container facts ------------------------------------------------------------------
    @property
    def source_fps(self) -> float | None:
        """Frames per second the container reports (None when unknown, e.g. some streams)."""
        return self._source_fps

    @property
    def frame_count(self) -> int | None:
        """Frames the container reports (None for cameras, streams and unknown counts)."""
        return self._frame_count

    @property
    def duration(self) -> float | None:
        """frame_count / source_fps in seconds, when the container reports both: exact for
        constant frame rate, an estimate for variable (FFmpeg's average rate for mp4/mov, about
        the container's duration; often a nominal rate for mkv). Timestamps stay exact."""
        count, fps = self.frame_count, self.source_fps
        return count / fps if count is not None and fps is not None else None

    # -- reading ----------------------------------------------------------------------------
    def _open(self) -> tuple[cv2.VideoCapture, np.ndarray]:
        """Open the capture and decode frame 0 (so an empty or corrupt file fails here)."""
        try:
            cap = _open_capture(self._target, self.kind, self._alias())
        except VideoError:
            self._remove_alias()
            raise
        ok, first = cap.read()
        if not ok or first is None or first.size == 0:
            cap.release()
            self._remove_alias()
            raise VideoError(f"no frame could be decoded from {_shown(str(self._target))} (empty "
                             f"or corrupt video); check the file or re-encode it with ffmpeg.")
        self._source_fps = _positive(cap.get(cv2.CAP_PROP_FPS))
        self._clock = _FrameClock(cap, self.kind, self._source_fps)
        count = _positive(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self.kind != "camera" else None
        self._frame_count = int(count) if count is not None else None
        return cap, first

    def _alias(self) -> str | None:
        """An ASCII-named link to a file whose name is not valid UTF-8, else None."""
        if self.kind != "file" or _utf8(self._target):
            return None
        folder, link = _ascii_alias(self._target)
        self._unlink = weakref.finalize(self, shutil.rmtree, folder, True)  # at close() or exit
        return link

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        if self._fixed_size is not None:
            return self._fixed_size
        factor, min_pixels, max_pixels = self._limits
        return smart_resize(height, width, factor, min_pixels, max_pixels)

    def _decoded(self) -> Iterator[tuple[int, float, cv2.VideoCapture]]:
        """(index, timestamp, capture) for each decoded frame; frame 0 is already retrieved."""
        if self._cap is None:  # a second pass over a file: open it again
            if self.kind != "file":
                raise VideoError(f"{self.kind} {self._target} was already read; open a new VideoSource.")
            self._cap, self._first = self._open()
        yield 0, 0.0, self._cap
        index = 1
        while self._cap.grab():  # decode only; pixels are retrieved for sampled frames
            yield index, self._clock(index), self._cap
            index += 1

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Yield (timestamp, frame (H, W, 3) uint8 RGB) at the target fps, up to max_frames."""
        taken, due = 0, 0.0
        try:
            for index, ts, cap in self._decoded():
                if self.max_frames is not None and taken >= self.max_frames:
                    break
                if ts + 1e-6 < due:  # slot k/fps takes the first frame at or after it
                    continue
                bgr = self._first if index == 0 else cap.retrieve()[1]
                if bgr is None:
                    break
                taken += 1
                if self.fps is not None:  # next slot after ts (a slow live reader skips slots)
                    due = (math.floor(ts * self.fps + 1e-6) + 1) / self.fps
                yield ts, resize_frame(bgr, self.frame_size)
        finally:
            self.close()

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        return self.frames()

    def blocks(self, n: int, pad_multiple: int = 1) -> Iterator[FrameBlock]:
        """Yield FrameBlocks of n frames ((n, H, W, 3) uint8); the last may hold fewer.

        pad_multiple: pad the last block by repeating its last frame up to a multiple of this
        (2 for Qwen's temporal patches); FrameBlock.n_real counts the frames before padding.
        """
        if n < 1 or pad_multiple < 1:
            raise ValueError(f"block size n={n} and pad_multiple={pad_multiple} must be >= 1.")
        buffer: list[tuple[float, np.ndarray]] = []
        start = 0
        for item in self.frames():
            buffer.append(item)
            if len(buffer) == n:
                yield self._block(buffer, start, pad_multiple)
                start, buffer = start + n, []
        if buffer:
            yield self._block(buffer, start, pad_multiple)

    @staticmethod
    def _block(items: list[tuple[float, np.ndarray]], start: int, pad_multiple: int) -> FrameBlock:
        frames = np.stack([f for _, f in items])  # (F, H, W, 3)
        timestamps = np.array([t for t, _ in items], dtype=np.float64)  # (F,)
        frames, timestamps = pad_block(frames, timestamps, pad_multiple)
        return FrameBlock(frames, timestamps, n_real=len(items), start=start)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """All sampled frames at once: ((F, H, W, 3) uint8, (F,) seconds). Mind max_frames."""
        items = list(self.frames())
        return np.stack([f for _, f in items]), np.array([t for t, _ in items], dtype=np.float64)

    def close(self) -> None:
        """Release the capture (idempotent). A file source reopens on the next frames()."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._remove_alias()

    def _remove_alias(self) -> None:
        if self._unlink is not None:
            self._unlink()  # runs once: removes the folder of the ASCII link
            self._unlink = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoSource({self.source!r}, kind={self.kind}, fps={self.fps}, "
                f"max_frames={self.max_frames}, frame_size={self.frame_size})")
