"""The HTTP side: an OpenAI-compatible FastAPI app over an Engine (engine.py).

    POST   /v1/chat/completions       a question about a video (or a live session); `stream: true`
                                      answers in server-sent `chat.completion.chunk`s, then [DONE]
    GET    /v1/models                 the one model served
    GET    /v1/stats                  counters, the queue and the memories held
    POST   /v1/sessions/{name}/frames append to a live session: `{"content": [video_url or image_url
                                      parts]}`, or the raw bytes of a video (Content-Type video/*) or
                                      an image (image/*), with ?num_frames=N or ?fps=F
    GET    /v1/sessions/{name}        a live session's stats;  DELETE: forget it
    GET    /health                    200 once the model is loaded (no key needed)
    GET    /  and /api/...            the library page and its API (web.py)

Every error is an OpenAI-style body (protocol.ApiError) with its status: 400 bad input,
401 a wrong or missing key (`--api-key`), 403 a path outside the allowed folders, 404, 413
a body over `--max-body-bytes`, 429 too many live sessions, 503 a full queue, 500 a bug
(logged; the server goes on). Media are made local (media.py) on a worker thread of the
HTTP side, then the job waits in the model queue (worker.py).
"""

from __future__ import annotations

import asyncio
import hmac
import tempfile
import time
from functools import partial
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from . import media, protocol
from .engine import Engine, api_error
from .protocol import ApiError
from .requests import (
    ChatRequest,
    MediaPart,
    parse_chat,
    parse_frames,
    parse_json,
    parse_sampling,
    session_name,
)
from .web import add_page
from .worker import Events

MEDIA_TYPES = {"video/": "video", "image/": "frames"}  # raw bodies a frames request may carry


def create_app(engine: Engine, api_key: str | None = None, max_body_bytes: int = 64 * 2**20) -> FastAPI:
    """The app; `api_key` None serves without a key."""
    app = FastAPI(title="infinipot_mlx", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    _error_handlers(app)

    served_host = getattr(engine.args, "host", "127.0.0.1")

    def authorize(request: Request) -> None:
        protocol.check_same_site(request.headers, served_host, request.method)
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "incorrect or missing API key: send the header `Authorization: Bearer KEY` "
                                "with the server's --api-key", "invalid_api_key")

    guarded = [Depends(authorize)]

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id}

    @app.get("/v1/models", dependencies=guarded)
    async def models():
        return protocol.model_list(engine.model_id, created)

    @app.get("/v1/stats", dependencies=guarded)
    async def stats():
        return engine.counters()

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(request: Request):
        req = parse_chat(parse_json(await read_body(request, max_body_bytes)))
        events = await _with_media(engine, req.media, partial(engine.answer, req))
        if req.stream:
            return StreamingResponse(_stream(engine, req, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await _complete(engine, events))

    @app.post("/v1/sessions/{name}/frames", dependencies=guarded)
    async def frames(name: str, request: Request):
        name = session_name(name)
        parts, sampling, raw = _frames_body(request, await read_body(request, max_body_bytes))
        return await _finish(await _with_media(engine, parts, partial(engine.append, name, sampling), raw))

    @app.get("/v1/sessions/{name}", dependencies=guarded)
    async def describe(name: str):
        return await _finish(await _queue(engine, partial(engine.describe, session_name(name))))

    @app.delete("/v1/sessions/{name}", dependencies=guarded)
    async def forget(name: str):
        return await _finish(await _queue(engine, partial(engine.forget, session_name(name))))

    add_page(app, engine, api_key, max_body_bytes, read_body, _queue)  # the page at / and its /api (web.py)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError):
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, err: HTTPException):  # unknown routes, wrong methods
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(ApiError(err.status_code, f"{err.detail}: {request.method} {request.url.path}",
                                     code).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, err: Exception):
        e = api_error(err)
        return JSONResponse(e.body(), status_code=e.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 when it passes `limit` bytes.

    A body over the limit is still read (and dropped) up to 16 times the limit: a client
    sends its whole body before it reads the answer, so answering early would cut the
    connection under it and it would see a broken pipe instead of the 413.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 16 * limit:
            break
    if size > limit:
        raise ApiError(413, f"the request body is over this server's limit of {limit} bytes "
                            "(--max-body-bytes); send the video as a file:// path or an http(s) URL",
                       "request_too_large")
    return b"".join(chunks)


def _frames_body(request: Request, body: bytes):
    """(parts, sampling, raw): a JSON body of parts, or a raw video or image body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    for prefix, media_kind in MEDIA_TYPES.items():
        if kind.startswith(prefix):
            if not body:
                raise ApiError(400, "the request body is empty; send the video or image bytes", "empty_body")
            return [], _query_sampling(request), (media_kind, kind, body)
    return (*parse_frames(parse_json(body)), None)


def _query_sampling(request: Request):
    """Sampling for a raw body: the `num_frames` and `fps` query parameters."""
    query = {k: _number(v) for k, v in request.query_params.items() if k in ("num_frames", "fps")}
    return parse_sampling(query)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


async def _with_media(engine: Engine, parts: list, job, raw=None) -> Events:
    """Make the media local (off the event loop), then queue `job(clips, events)`; the
    request's temporary folder goes once the job has streamed them (its first event)."""
    folder = Path(tempfile.mkdtemp(prefix="infinipot-request-"))
    try:
        clips = await run_in_threadpool(_local_media, parts, folder, engine.limits, raw)
        return await _queue(engine, partial(job, clips))
    finally:
        media.remove(folder)


async def _queue(engine: Engine, job) -> Events:
    """Queue `job(events)` on the model thread and wait for its first event; an error before
    an answer began is raised here, so that it gets its own status."""
    events = Events(asyncio.get_running_loop())
    try:
        engine.worker.submit(engine.run, job, events)
        events.first = await events.next()
    except BaseException:
        events.cancelled.set()
        raise
    if events.first[0] == "error":
        raise events.first[1]
    return events


def _local_media(parts, folder: Path, limits, raw):
    if raw is None:
        return media.resolve(parts, folder, limits)
    media_kind, mime, body = raw
    path = folder / ("upload" + media.SUFFIXES.get(mime, ".mp4" if media_kind == "video" else ".img"))
    path.write_bytes(body)
    wide = media.Limits(allowed_roots=(), max_download_bytes=limits.max_download_bytes)  # our own file
    return media.resolve([MediaPart(media_kind, [path.as_uri()], "body")], folder, wide)


async def _complete(engine: Engine, events: Events) -> dict:
    """A non-streaming chat.completion from a job's events."""
    kind, payload = events.first
    pieces = []
    while kind not in ("done", "error"):
        if kind == "piece":
            pieces.append(payload)
        kind, payload = await events.next()
    if kind == "error":
        raise payload
    return protocol.completion(protocol.completion_id(), engine.model_id, "".join(pieces),
                               protocol.FINISH_REASONS.get(payload["stop_reason"], "stop"),
                               _usage(payload), _facts(payload))


async def _stream(engine: Engine, req: ChatRequest, events: Events):
    """Server-sent chunks: the role, each piece, the finish reason, [usage], [DONE]."""
    cid, model = protocol.completion_id(), engine.model_id
    kind, payload = events.first
    try:
        yield protocol.sse(protocol.chunk(cid, model, {"role": "assistant", "content": ""}))
        while kind not in ("done", "error"):
            kind, payload = await events.next()
            if kind == "piece":
                yield protocol.sse(protocol.chunk(cid, model, {"content": payload}))
            elif kind == "error":  # the stream has begun, so the error travels in it
                yield protocol.sse(payload.body())
        if kind == "done":
            finish = protocol.FINISH_REASONS.get(payload["stop_reason"], "stop")
            yield protocol.sse(protocol.chunk(cid, model, {}, finish))
            if req.include_usage:
                yield protocol.sse(protocol.usage_chunk(cid, model, _usage(payload), _facts(payload)))
        yield protocol.sse("[DONE]")
    finally:
        events.cancelled.set()  # a client that left stops the decoding


async def _finish(events: Events) -> dict:
    """The `done` payload of a job that answers once (frames, session stats, delete)."""
    kind, payload = events.first
    while kind not in ("done", "error"):
        kind, payload = await events.next()
    if kind == "error":
        raise payload
    return payload


def _usage(done: dict) -> dict:
    return protocol.usage(done["prompt_tokens"], done["completion_tokens"])


def _facts(done: dict) -> dict:
    return {k: v for k, v in done.items() if k not in ("prompt_tokens", "completion_tokens")}
