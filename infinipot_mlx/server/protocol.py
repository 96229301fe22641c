"""The OpenAI wire format: error bodies, completions, stream chunks, the model list.

Every error the server answers is an ApiError, written as OpenAI writes them:
`{"error": {"message", "type", "code", "param"}}` with the HTTP status. Nothing here
touches a model or a network; the shapes follow the chat completions API
(`chat.completion`, `chat.completion.chunk`, `data: [DONE]`).
"""

from __future__ import annotations

import json
import time
import uuid

# how an answer's stop_reason (answer.py) reads as an OpenAI finish_reason
FINISH_REASONS = {"eos": "stop", "stop": "stop", "max_tokens": "length", "cap": "length",
                  "positions": "length", "interrupted": "stop"}


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
# the bodies a form or a script of any web site may POST here without the browser asking first
CROSS_SITE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


class ApiError(Exception):
    """A request the server answers with an OpenAI-style error body and `status`."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> ApiError:
    """A 400: the request itself is wrong; its message says how to fix it."""
    return ApiError(400, message, code, param=param)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, finish: str, usage: dict, extra: dict) -> dict:
    """A non-streaming `chat.completion` (with this server's `infinipot` facts beside it)."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage, "infinipot": extra}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> dict:
    """One `chat.completion.chunk` with one choice."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(cid: str, model: str, usage: dict, extra: dict) -> dict:
    """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage, "infinipot": extra}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def model_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                        "owned_by": "infinipot_mlx"}]}


def check_same_site(headers, served_host: str, method: str) -> None:
    """Refuse what only another web site would send to a server on this machine: a Host that is
    not this machine's loopback name (DNS rebinding) when the server listens on loopback, and
    a POST whose body type a plain form can send (cross-site request forgery)."""
    host = headers.get("host", "")
    host = host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.partition(":")[0]
    if served_host in LOOPBACK_NAMES and host not in LOOPBACK_NAMES:
        raise ApiError(403, f"this server answers on 127.0.0.1 or localhost, not {host!r}", "host_not_allowed")
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if method == "POST" and kind in CROSS_SITE_TYPES:
        raise ApiError(415, f"a {kind} body is refused (another site's form could send it); send JSON with "
                            "Content-Type: application/json", "unsupported_media_type")
