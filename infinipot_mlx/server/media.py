"""Media of a request, made local: videos as files, image frames as arrays, each with a
content key (the key of its video memory). Nothing here touches the model.

URLs a part may carry:

- `file:///abs/path` (or a bare absolute path): read in place, when it lies under one of
  the allowed folders (`--allowed-local-media-path`; every folder when none is given);
- `data:<mime>;base64,<bytes>`: written to a temporary file in the request's folder;
- `http://` and `https://`: downloaded to a temporary file (at most `max_download_bytes`).

A video's key is memories.content_hash of its file (the same video sent as a path, as
data or as a URL has the same key); a clip of image frames is keyed by the sha256 of the
images' bytes. Every failure is an ApiError (400, or 403 for a path outside the allowed
folders) whose message says what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .protocol import ApiError, bad_request
from .requests import MediaPart

SUFFIXES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-msvideo": ".avi",
            "video/avi": ".avi", "video/x-matroska": ".mkv", "video/mpeg": ".mpg", "video/ogg": ".ogv"}
DOWNLOAD_TIMEOUT_S = 60.0
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+/-]*)(?P<params>(?:;[\w.+-]+=?[\w.+-]*)*?)(?P<b64>;base64)?,",
                       re.IGNORECASE)


@dataclass
class Limits:
    """Where local media may come from and how much may be downloaded."""

    allowed_roots: tuple[Path, ...] = ()  # empty: any local file
    max_download_bytes: int = 2 * 1024**3


@dataclass
class Clip:
    """One video (`path`) or one run of image frames (`frames`: BGR (h, w, 3) uint8 as
    decoded, resized to the first one's size), with its content key."""

    key: str
    name: str
    path: Path | None = None
    frames: list[np.ndarray] = field(default_factory=list)


def resolve(parts: list[MediaPart], folder: Path, limits: Limits) -> list[Clip]:
    """The request's media parts as local clips (temporary files go in `folder`)."""
    return [_video_clip(p, folder, limits, i) if p.kind == "video" else _frames_clip(p, limits)
            for i, p in enumerate(parts)]


def _video_clip(part: MediaPart, folder: Path, limits: Limits, index: int) -> Clip:
    from ..stream.memory_file import content_hash

    path = local_file(part.urls[0], folder / f"video{index}", limits, part.param)
    return Clip(key=content_hash(path), name=_display_name(part.urls[0], path), path=path)


def _frames_clip(part: MediaPart, limits: Limits) -> Clip:
    import cv2

    digest, frames = hashlib.sha256(), []
    for i, url in enumerate(part.urls):
        data = read_bytes(url, limits, f"{part.param}[{i}]")
        digest.update(hashlib.sha256(data).digest())
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise bad_request(f"image {i + 1} of {len(part.urls)} is not a readable image (PNG, JPEG, "
                              "WebP, ...); send image_url parts with image data", "invalid_image", part.param)
        if frames and bgr.shape != frames[0].shape:
            bgr = cv2.resize(bgr, (frames[0].shape[1], frames[0].shape[0]), interpolation=cv2.INTER_AREA)
        frames.append(bgr)
    key = f"frames-sha256:{digest.hexdigest()}"
    return Clip(key=key, name=f"{len(frames)} frames", frames=frames)


def _display_name(url: str, path: Path) -> str:
    return path.name if not url.startswith("data:") else "data-url" + path.suffix


# ----- one URL -> a local file or bytes ----------------------------------------------------------
def local_file(url: str, stem: Path, limits: Limits, param: str) -> Path:
    """A local file holding the URL's bytes: the file itself for a path, else a new file `stem.*`."""
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme in ("", "file"):
        return allowed_path(url, limits, param)
    if scheme == "data":
        mime, data = decode_data_url(url, param)
        path = stem.with_suffix(SUFFIXES.get(mime, ".mp4"))
        path.write_bytes(data)
        return path
    if scheme in ("http", "https"):
        return download(url, stem.with_suffix(Path(urllib.parse.urlsplit(url).path).suffix[:8] or ".mp4"),
                        limits, param)
    raise bad_request(f"unsupported URL scheme {scheme!r}; send a file://, data: or http(s):// URL",
                      "unsupported_url", param)


def read_bytes(url: str, limits: Limits, param: str) -> bytes:
    """The bytes behind an image URL (a data: URL, a local file or a download)."""
    if url.startswith("data:"):
        return decode_data_url(url, param)[1]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="infinipot-image-") as tmp:
        path = local_file(url, Path(tmp) / "image", limits, param)
        return path.read_bytes()


def allowed_path(url: str, limits: Limits, param: str) -> Path:
    """The local file a file:// URL or a path names, checked against the allowed folders."""
    if url.startswith("file:"):
        split = urllib.parse.urlsplit(url)
        if split.netloc not in ("", "localhost"):
            raise bad_request(f"file URL {url[:80]!r} names another host; use file:///absolute/path",
                              "invalid_url", param)
        text = urllib.parse.unquote(split.path)
    else:
        text = url
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise bad_request(f"local path {text[:80]!r} is not absolute; send file:///absolute/path",
                          "invalid_url", param)
    path = path.resolve()
    if limits.allowed_roots and not any(path.is_relative_to(root) for root in limits.allowed_roots):
        raise ApiError(403, f"{path} is outside the folders this server reads local media from "
                            "(--allowed-local-media-path); send the video as data: or http(s)",
                       "path_not_allowed", param=param)
    if not path.is_file():
        raise bad_request(f"video file not found: {path}; check the path (the server reads it on its "
                          "own machine)", "file_not_found", param)
    return path


def decode_data_url(url: str, param: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a base64 data: URL."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise bad_request("a data: URL must be base64: data:video/mp4;base64,<bytes>", "invalid_data_url", param)
    try:
        data = base64.b64decode(url[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data: URL's payload is not valid base64", "invalid_data_url", param) from None
    if not data:
        raise bad_request("the data: URL is empty", "invalid_data_url", param)
    return match.group("mime").lower(), data


def download(url: str, path: Path, limits: Limits, param: str) -> Path:
    """Download `url` to `path`, refusing more than limits.max_download_bytes."""
    request = urllib.request.Request(url, headers={"User-Agent": "infinipot_mlx-server"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as out:
            _copy_capped(response, out, limits.max_download_bytes, url, param)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise bad_request(f"cannot download {url[:120]} ({reason}); check the URL, or send the video "
                          "as a file:// path or a data: URL", "download_failed", param) from None
    return path


def _copy_capped(response, out, limit: int, url: str, param: str) -> None:
    copied = 0
    while chunk := response.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise bad_request(f"{url[:120]} is larger than this server downloads ({limit} bytes, "
                              "--max-download-bytes)", "download_too_large", param)
        out.write(chunk)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
