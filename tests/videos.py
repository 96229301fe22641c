"""Test videos written with OpenCV: moving shapes, a static scene with short events, broken files.

Every generator is deterministic and returns the path it wrote. Frames are BGR for OpenCV;
VideoSource returns RGB. Codecs that this OpenCV build writes: mp4v (.mp4), MJPG and XVID (.avi).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CODECS = {"mp4v": ".mp4", "MJPG": ".avi", "XVID": ".avi"}


def write_video(path: str | Path, frames: np.ndarray, fps: float, fourcc: str = "mp4v") -> Path:
    """Write BGR uint8 frames (F, H, W, 3) to `path` with the given codec; returns the path."""
    path = Path(path)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"this OpenCV build cannot write {fourcc} to {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


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
