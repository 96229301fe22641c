"""Reading request bodies: a chat completion request, and frames for a named session.

Content parts accepted (OpenAI's, mlx-vlm's and lmms-eval's names):

- text: `{"type": "text", "text"}` or `{"type": "input_text", "text"}`, or a plain string;
- video: `{"type": "video_url", "video_url": {"url"}}` (or `"video_url": "<url>"`),
  `{"type": "video", "video": "<url>" | {"url"}}` (mlx-vlm), `{"type": "input_video",
  "video" | "video_url": ...}`;
- image frames: `{"type": "image_url", "image_url": {"url"}}`, `{"type": "input_image",
  "image_url": "<url>"}`: consecutive images of one message are the frames of one clip, in
  order (what lmms-eval sends for a video without `pass_video_url`).

Any other part type is a 400 naming it. The question is the text of the last user message.
Media come from the user messages, in order; earlier questions, answers and system
messages are not replayed (the answer rests on the video memory and the last question).
Sampling: `media_io_kwargs: {"video": {"num_frames": N, "fps": F}}` (lmms-eval's and
vLLM's extra body field) or the top-level `num_frames` / `fps`: N frames spread evenly
over each video, or F frames per second. `model` is not checked (one model is served);
`max_tokens` (or `max_completion_tokens`, default 256), `temperature` (default 0: greedy),
`top_p`, `stop`, `stream` and `stream_options.include_usage` are honoured; `n` must be 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .protocol import bad_request

SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VIDEO_TYPES = {"video_url": ("video_url",), "video": ("video", "video_url"), "input_video": ("video", "video_url")}
IMAGE_TYPES = {"image_url": ("image_url",), "input_image": ("image_url", "image")}
TEXT_TYPES = ("text", "input_text")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
DEFAULT_MAX_TOKENS = 256


@dataclass
class MediaPart:
    """A video (one URL) or a run of image frames (their URLs), and where it was in the body."""

    kind: str  # "video" | "frames"
    urls: list[str]
    param: str  # e.g. "messages[0].content[1]"


@dataclass
class Sampling:
    """How frames are taken from a video: N spread over it, F per second, or the server's fps."""

    num_frames: int | None = None
    fps: float | None = None


@dataclass
class ChatRequest:
    question: str
    media: list[MediaPart]
    session: str | None = None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)


def parse_json(body: bytes) -> dict:
    """The JSON object of a request body, or a 400."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON ({err}); send a JSON object",
                          "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", "invalid_json")
    return data


def parse_chat(body: dict) -> ChatRequest:
    """A ChatRequest from a chat completions body (module docstring), or a 400."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list of messages", "invalid_messages", "messages")
    media, last_text = [], None
    for i, message in enumerate(messages):
        role, parts = _message(message, i)
        texts, found = _parts(parts, f"messages[{i}]")
        if role == "user":
            media += found
            last_text = "\n".join(texts)
    if not last_text or not last_text.strip():
        raise bad_request("the last user message has no text: ask a question about the video",
                          "no_question", "messages")
    req = ChatRequest(question=last_text.strip(), media=media, session=session_name(body.get("session")),
                      sampling=parse_sampling(body))
    _generation(body, req)
    if not req.media and req.session is None:
        raise bad_request("no video in the request: add a video_url part (file://, data: or http(s)) "
                          "or name a live session with \"session\"", "no_video", "messages")
    return req


def _message(message, i: int) -> tuple[str, list]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise bad_request(f"messages[{i}] must be an object with a role ({', '.join(ROLES)})",
                          "invalid_messages", f"messages[{i}]")
    content = message.get("content")
    if content is None:
        return message["role"], []
    if isinstance(content, str):
        return message["role"], [content]
    if not isinstance(content, list):
        raise bad_request(f"messages[{i}].content must be a string or a list of parts",
                          "invalid_messages", f"messages[{i}].content")
    return message["role"], content


def _parts(parts: list, where: str) -> tuple[list[str], list[MediaPart]]:
    """(texts, media) of one message's content parts, in order."""
    texts, media = [], []
    for j, part in enumerate(parts):
        param = f"{where}.content[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_TYPES and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in VIDEO_TYPES:
            media.append(MediaPart("video", [_url(part, VIDEO_TYPES[kind], param)], param))
        elif kind in IMAGE_TYPES:
            url = _url(part, IMAGE_TYPES[kind], param)
            if media and media[-1].kind == "frames":
                media[-1].urls.append(url)
            else:
                media.append(MediaPart("frames", [url], param))
        else:
            raise bad_request(f"unsupported content part type {kind!r} at {param}; send text, video_url "
                              "(or video, input_video) and image_url parts", "unsupported_content_type",
                              f"{param}.type")
    return texts, media


def _url(part: dict, keys: tuple[str, ...], param: str) -> str:
    for key in keys:
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise bad_request(f"{param} has no URL: write {{\"type\": \"{part['type']}\", \"{keys[0]}\": "
                      "{\"url\": \"file:///path/to/video.mp4\"}}", "invalid_url", param)


def parse_sampling(body: dict) -> Sampling:
    """media_io_kwargs.video.{num_frames, fps}, or the top-level num_frames / fps."""
    kwargs = body.get("media_io_kwargs") or {}
    video = kwargs.get("video") if isinstance(kwargs, dict) else None
    if kwargs and not isinstance(video, dict):
        raise bad_request("media_io_kwargs must look like {\"video\": {\"num_frames\": 16}}",
                          "invalid_media_io_kwargs", "media_io_kwargs")
    video = video or {}
    n = video.get("num_frames", body.get("num_frames"))
    fps = video.get("fps", body.get("fps"))
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise bad_request(f"num_frames must be a positive integer, got {n!r}", "invalid_num_frames",
                          "media_io_kwargs.video.num_frames")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
        raise bad_request(f"fps must be a positive number, got {fps!r}", "invalid_fps", "media_io_kwargs.video.fps")
    return Sampling(num_frames=n, fps=None if fps is None else float(fps))


def _generation(body: dict, req: ChatRequest) -> None:
    """stream, max_tokens, temperature, top_p, stop, n into `req` (400 on a bad value)."""
    req.stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    req.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    most = body.get("max_completion_tokens", body.get("max_tokens"))
    req.max_tokens = DEFAULT_MAX_TOKENS if most is None else _positive_int(most, "max_tokens")
    req.temperature = float(_typed(body, "temperature", (int, float), 0.0))
    req.top_p = float(_typed(body, "top_p", (int, float), 1.0))
    if req.temperature < 0 or not 0 < req.top_p <= 1:
        raise bad_request("temperature must be >= 0 and top_p in (0, 1]", "invalid_sampling", "temperature")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "invalid_stop", "stop")
    req.stop = tuple(s for s in stops if s)
    if body.get("n", 1) != 1:
        raise bad_request("n must be 1: this server answers with one choice", "invalid_n", "n")


def _typed(body: dict, name: str, kind, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise bad_request(f"{name} has the wrong type ({type(value).__name__})", f"invalid_{name}", name)
    return value


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer, got {value!r}", f"invalid_{name}", name)
    return value


def session_name(value) -> str | None:
    """A live session's name (letters, digits, `_.-`, at most 64), or None; a 400 otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or not SESSION_NAME.fullmatch(value):
        raise bad_request("a session name is 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                          "or digit", "invalid_session_name", "session")
    return value


def parse_frames(body: dict) -> tuple[list[MediaPart], Sampling]:
    """The media of a POST /v1/sessions/{name}/frames body: `{"content": [parts]}` (the parts
    of a chat message) or one part on its own (`{"type": "video_url", ...}`)."""
    parts = body.get("content", [body] if "type" in body else None)
    if not isinstance(parts, list):
        raise bad_request("send {\"content\": [{\"type\": \"video_url\", \"video_url\": {\"url\": ...}}]} "
                          "or image_url parts (frames)", "invalid_frames", "content")
    texts, media = _parts(parts, "body")
    if texts or not media:
        raise bad_request("frames take video_url or image_url parts and no text; ask with "
                          "POST /v1/chat/completions and \"session\"", "invalid_frames", "content")
    return media, parse_sampling(body)
