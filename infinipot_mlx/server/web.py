"""The page: a local web page over the server's --library, at GET /, and the small JSON API it
uses under /api. Its assets (static/: one HTML file, one script, one style sheet) ship in the
package; nothing is fetched from elsewhere.

    GET  /                           the page;  /static/*: its assets (no key needed: they hold no data)
    POST /api/login                  {"key"}: the --api-key as an HttpOnly, SameSite=Strict cookie
    GET  /api/library                the videos (id, name, duration, status) and the index jobs
    GET  /api/videos/{id}/file       the video file itself, with byte ranges (206), for the player
    GET  /api/videos/{id}/frame?t=S  one frame at S seconds as a JPEG (thumbnails), decoded in memory
    POST /api/index                  {"folder"}: index it (202 {"job"}), on the model thread
    GET  /api/jobs/{id}              that job's progress
    POST /api/ask                    {"question", "top"}: ranked moments across the library
    POST /api/videos/{id}/chat       {"question"}: the answer streamed (server-sent events), then
                                     the moments it rests on
    POST /api/videos/{id}/memory-map the memory map as a PNG

Safety: every /api route needs the key when --api-key is set (the Bearer header or the cookie);
POST bodies are JSON only (another site's plain form cannot send one); a server on 127.0.0.1
answers the page's routes only for the Host 127.0.0.1 or localhost (no DNS rebinding);
a video is named by its catalogue id, never by a path, and is served or read only when it is
under --allowed-local-media-path (when given); a folder to index must be under it too. No GET
writes anything or queues work on the model.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import threading
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from . import media
from .engine import Engine, api_error
from .protocol import ApiError, check_same_site
from .requests import ChatRequest, parse_json

STATIC = Path(__file__).with_name("static")
COOKIE = "infinipot_key"
FRAME_CACHE = 256  # JPEG frames held in RAM (thumbnails)


def add_page(app: FastAPI, engine: Engine, api_key: str | None, max_body_bytes: int, read_body, queue) -> None:
    """Add the page, its assets and its /api routes to `app` (module docstring); `read_body` and
    `queue` are app.py's (a body under the limit; a job queued on the model thread)."""
    library: Path | None = engine.args.library
    served_host = getattr(engine.args, "host", "127.0.0.1")
    jobs, frames = Jobs(), {}
    app.state.page_jobs = jobs  # start_index's

    def authorize(request: Request, needs_key: bool = True) -> None:
        check_same_site(request.headers, served_host, request.method)  # DNS rebinding, plain-form POSTs
        if api_key is None or not needs_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "this server needs its API key (--api-key): enter it on the page",
                           "invalid_api_key")

    async def body(request: Request, needs_key: bool = True) -> dict:
        """The JSON body of a POST: JSON only, so that another site's plain form cannot send it."""
        authorize(request, needs_key)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "send the body as JSON (Content-Type: application/json)", "unsupported_media_type")
        return parse_json(await read_body(request, max_body_bytes))

    def entry(video_id: str):
        if library is None:
            raise ApiError(404, "this server has no library; start it with --library DIR", "no_library")
        found = {video_key(row): row[0] for row in catalogue_entries(library)}.get(video_id)
        if found is None:
            raise ApiError(404, f"no video {video_id!r} in the library", "video_not_found")
        return found

    def video_file(video_id: str) -> Path:
        e = entry(video_id)  # a path the catalogue recorded, checked as a request's file:// would be
        return media.allowed_path(e.path, engine.limits, "video")

    def clip(video_id: str) -> media.Clip:
        from ..stream.memory_file import content_hash

        path = video_file(video_id)
        return media.Clip(key=content_hash(path), name=entry(video_id).name, path=path)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.post("/api/login")
    async def login(request: Request):
        key = (await body(request, needs_key=False)).get("key", "")
        if api_key is not None and not hmac.compare_digest(str(key).encode(), api_key.encode()):
            raise ApiError(401, "that is not this server's API key", "invalid_api_key")
        reply = JSONResponse({"ok": True})
        reply.set_cookie(COOKIE, str(key), httponly=True, samesite="strict")
        return reply

    @app.get("/api/library")
    async def listing(request: Request):
        authorize(request)
        videos = [] if library is None else [describe(e) for e in await run_in_threadpool(catalogue_entries, library)]
        return {"library": None if library is None else str(library), "model": engine.model_id,
                "videos": videos, "jobs": jobs.snapshot()}

    @app.get("/api/videos/{video_id}/file")
    async def file(video_id: str, request: Request):
        authorize(request)
        return FileResponse(await run_in_threadpool(video_file, video_id))  # Range: 206 (Starlette)

    @app.get("/api/videos/{video_id}/frame")
    async def frame(video_id: str, request: Request, t: float = 0.0):
        authorize(request)
        path = await run_in_threadpool(video_file, video_id)
        key = (str(path), round(max(t, 0.0), 1))
        if key not in frames:
            if len(frames) >= FRAME_CACHE:
                frames.pop(next(iter(frames)))
            frames[key] = await run_in_threadpool(jpeg_at, path, key[1])
        return Response(frames[key], media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/index", status_code=202)
    async def index(request: Request):
        folder = (await body(request)).get("folder")
        if library is None:
            raise ApiError(400, "this server has no library to index into; start it with --library DIR",
                           "no_library")
        if not isinstance(folder, str) or not folder.strip():
            raise ApiError(400, "give the folder of videos to index, as an absolute path", "invalid_folder")
        path = check_folder(folder.strip(), engine.limits)
        job = jobs.new(str(path))
        engine.worker.submit(run_index, engine, library, path, jobs, job)  # 503 when the queue is full
        return {"job": job["id"]}

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str, request: Request):
        authorize(request)
        found = jobs.get(job_id)
        if found is None:
            raise ApiError(404, f"no index job {job_id!r}", "job_not_found")
        return found

    @app.post("/api/ask")
    async def ask(request: Request):
        data = await body(request)
        question, top = str(data.get("question", "")).strip(), data.get("top", 5)
        if not question:
            raise ApiError(400, "the question is empty; write a question about the videos", "invalid_question")
        if library is None:
            raise ApiError(400, "this server has no library; start it with --library DIR", "no_library")
        if not isinstance(top, int) or not 1 <= top <= 50:
            raise ApiError(400, f"top must be an integer in 1-50, got {top!r}", "invalid_top")
        events = await queue(engine, partial(run_search, engine, library, question, top))
        return events.first[1]

    @app.post("/api/videos/{video_id}/chat")
    async def chat(video_id: str, request: Request):
        question = str((await body(request)).get("question", "")).strip()
        if not question:
            raise ApiError(400, "the question is empty; write a question about the video", "invalid_question")
        found = await run_in_threadpool(clip, video_id)
        events = await queue(engine, partial(engine.answer, ChatRequest(question, []), [found], evidence=True))
        return StreamingResponse(chat_events(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/api/videos/{video_id}/memory-map")
    async def memory_map(video_id: str, request: Request):
        await body(request)
        found = await run_in_threadpool(clip, video_id)
        events = await queue(engine, partial(engine.memory_map, [found]))
        return Response(events.first[1], media_type="image/png")


# ----- the catalogue, read only ---------------------------------------------------------------
def catalogue_entries(library: Path) -> list:
    from ..library import Catalogue

    with Catalogue(library) as catalogue:
        return [(e, catalogue.memory_path(e)) for e in catalogue.entries()]


def video_key(row) -> str:
    """A video's id on the page: 16 hex of its catalogue key (content, model, settings)."""
    e = row[0] if isinstance(row, tuple) else row
    return hashlib.sha256(f"{e.content}\n{e.model_key}\n{e.settings}".encode()).hexdigest()[:16]


def describe(row) -> dict:
    e, memory = row
    status = e.status if e.status == "failed" or (memory and memory.is_file()) else "missing"
    return dict(id=video_key(e), name=e.name, duration=e.duration, status=status, reason=e.reason,
                memory_bytes=e.memory_bytes, model=e.model_name, created=e.created)


def check_folder(folder: str, limits: media.Limits) -> Path:
    """The folder to index, absolute, existing and under --allowed-local-media-path when given."""
    path = Path(folder).expanduser()
    if not path.is_absolute():
        raise ApiError(400, f"{folder!r} is not an absolute path; give the folder's full path", "invalid_folder")
    path = path.resolve()
    if limits.allowed_roots and not any(path.is_relative_to(root) for root in limits.allowed_roots):
        raise ApiError(403, f"{path} is outside the folders this server reads local media from "
                            "(--allowed-local-media-path)", "path_not_allowed", param="folder")
    if not path.is_dir():
        raise ApiError(400, f"{path} is not a folder; give a folder of videos", "invalid_folder")
    return path


def jpeg_at(path: Path, seconds: float) -> bytes:
    """The frame at `seconds` (the last one when past the end) as JPEG bytes, at most 320 wide."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        capture.set(cv2.CAP_PROP_POS_MSEC, seconds * 1000.0)
        ok, bgr = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, max(capture.get(cv2.CAP_PROP_FRAME_COUNT) - 1, 0))
            ok, bgr = capture.read()
    finally:
        capture.release()
    if not ok:
        raise ApiError(404, f"no frame at {seconds:g} s in {path.name}", "no_frame")
    if bgr.shape[1] > 320:
        bgr = cv2.resize(bgr, (320, round(bgr.shape[0] * 320 / bgr.shape[1])), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


async def chat_events(events):
    """Server-sent events: {"piece"}..., then {"done": {..., "evidence"}} or {"error"}."""
    from . import protocol

    kind, payload = events.first
    try:
        while kind not in ("done", "error"):
            kind, payload = await events.next()
            if kind == "piece":
                yield protocol.sse(json.dumps({"piece": payload}))
        if kind == "error":
            yield protocol.sse(json.dumps({"error": payload.body()["error"]["message"]}))
        else:
            yield protocol.sse(json.dumps({"done": payload}))
    finally:
        events.cancelled.set()


# ----- jobs on the model thread ----------------------------------------------------------------
class Jobs:
    """Index jobs and their progress, written by the model thread, read by GETs."""

    def __init__(self):
        self._lock, self._jobs = threading.Lock(), {}

    def new(self, folder: str) -> dict:
        with self._lock:
            job = dict(id=str(len(self._jobs) + 1), folder=folder, state="queued", videos=0, current=None,
                       position=0, frames=0, frames_total=None, lines=[], error=None)
            self._jobs[job["id"]] = job
            return job

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else json.loads(json.dumps(job))

    def snapshot(self) -> list[dict]:
        with self._lock:
            return json.loads(json.dumps(list(self._jobs.values())))

    def update(self, job: dict, **fields) -> None:
        with self._lock:
            job.update(fields)

    def say(self, job: dict, line: str) -> None:
        with self._lock:
            job["lines"].append(line)


def start_index(app: FastAPI, engine: Engine, folder: Path) -> dict:
    """Queue the indexing of `folder` into the server's library (server --demo's start)."""
    job = app.state.page_jobs.new(str(folder))
    engine.worker.submit(run_index, engine, Path(engine.args.library), folder, app.state.page_jobs, job)
    return job


def run_index(engine: Engine, library: Path, folder: Path, jobs: Jobs, job: dict) -> None:
    """Index `folder` into `library` with the server's model and settings (library/indexer.py,
    as `library index` does), reporting progress into `job`."""
    from ..library import Catalogue
    from ..library.indexer import Indexer, find_videos
    from ..stream import memory_file as memories

    update = partial(jobs.update, job)
    try:
        videos = find_videos(folder)
        update(state="running", videos=len(videos))
        args = argparse.Namespace(**{**vars(engine.args), "retry_failed": False})
        with Catalogue(library, create=True) as catalogue:
            memories.sweep_temporaries(catalogue.memories)
            indexer = Indexer(args, catalogue, engine.model_dir, session=engine.new_session(), bar=False,
                              say=partial(jobs.say, job),
                              on_frames=lambda n, total: update(frames=n, frames_total=total))
            for i, video in enumerate(videos):
                update(position=i + 1, current=video.relative_to(folder).as_posix(), frames=0, frames_total=None)
                indexer.index(video, video.relative_to(folder).as_posix())
        update(state="done", current=None)
    except Exception as err:  # a UserError is the job's one line; a bug is logged with its traceback
        update(state="failed", error=api_error(err).body()["error"]["message"])


def run_search(engine: Engine, library: Path, question: str, top: int, events) -> None:
    """Ranked moments across the library (library/search.py's Ranker, kept on the engine for the
    next question), on the model thread; a memory that cannot answer is listed in `errors`."""
    from ..library.search import Ranker

    ranker = getattr(engine, "page_ranker", None)
    if ranker is None:
        ranker = engine.page_ranker = Ranker(library, device=engine.args.device)
        # memories made with the server's checkpoint are asked on its loaded model, not a second copy
        ranker.sessions[(str(engine.model_dir.resolve()), engine.args.backend)] = engine.new_session()
    errors = []
    hits = ranker.ask(question, top=top, on_error=lambda name, message: errors.append(dict(name=name, error=message)))
    ids = {row[0].path: video_key(row) for row in catalogue_entries(library) if row[0].status == "done"}
    events.emit("done", dict(errors=errors, hits=[
        dict(rank=h.rank, name=h.name, id=ids.get(h.path), seconds=h.seconds, answer=h.answer, score=h.score,
             share=h.share) for h in hits]))
