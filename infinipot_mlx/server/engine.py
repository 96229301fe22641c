"""The server's model side: the loaded checkpoint, its sessions, and the jobs the HTTP side
queues on the model thread (worker.py): answer a question, append frames to a named
session, forget one.

Where a question's memory comes from, in order:

1. `"session": NAME`: that live session (any media in the request are streamed into it
   first); its questions and answers stay in it.
2. the pool (pool.py): a memory of the same videos (content keys, media.py) and the same
   settings (the InfiniPotConfig, fps, frame sampling, pixels, backend) is reused as it
   was right after its videos; the vision tower does not run again.
3. the library (`--library DIR`): a done memory file of the same video, model and settings
   (one video, no per-request sampling; library/catalogue.py keys) is loaded, not encoded.
4. otherwise the videos are streamed into a new session, which the pool then holds.

Counters (counters(), served at GET /v1/stats) say which of these happened and how much
vision work ran: `frames_encoded` and `vision_seconds` grow only when a video is encoded.
"""

from __future__ import annotations

import logging
import threading
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..stream import memory_file as memories
from ..errors import UserError, one_line
from .media import Clip
from .pool import Memory, MemoryPool
from .protocol import ApiError
from .requests import ChatRequest, Sampling
from .worker import Events, ModelWorker

log = logging.getLogger("infinipot_mlx.server")
ERROR_CODES = {"VideoError": "invalid_video", "QuestionTooLongError": "context_length_exceeded",
               "CapacityError": "capacity_exceeded", "MemoryFileError": "invalid_memory_file",
               "PositionLimitError": "position_limit", "CatalogueError": "invalid_library"}


@dataclass
class Counters:
    """What the server did since it started (GET /v1/stats)."""

    completions: int = 0  # questions answered
    memory_hits: int = 0  # answered from a memory held in RAM
    memory_misses: int = 0  # videos streamed into a new memory
    library_hits: int = 0  # memories loaded from --library
    videos_encoded: int = 0  # clips streamed through the vision tower
    frames_encoded: int = 0  # sampled frames encoded
    vision_seconds: float = 0.0  # time in the vision tower
    compressions: int = 0  # compressions while streaming videos in
    peak_cached: int = 0  # the most tokens any session's cache held
    capacity: int | None = None


def api_error(err: BaseException) -> ApiError:
    """The HTTP answer to an exception from a job: 400 for a UserError, 500 for a bug."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, UserError):
        return ApiError(400, one_line(err), ERROR_CODES.get(type(err).__name__, "invalid_request"))
    log.error("internal error in a model job:\n%s", "".join(traceback.format_exception(err)))
    return ApiError(500, f"internal error ({type(err).__name__}: {one_line(err)[:200]}); the server goes on",
                    "internal_error", "server_error")


class Engine:
    """The loaded model, the pool of memories, the model thread and the counters (module docstring).

    `args`: the server's parsed flags (cli/server.py), read as chat's functions read them.
    """

    def __init__(self, args, limits):
        self.args, self.limits = args, limits
        self.worker = ModelWorker(args.queue_limit)
        self.pool = MemoryPool(args.max_memories_bytes, args.max_sessions)
        self.stats = Counters()
        self._lock = threading.Lock()  # the counters, read by /v1/stats on the HTTP thread
        self.worker.call(self._load)

    # ----- loading (on the model thread) ---------------------------------------------------
    def _load(self) -> None:
        from ..contract.specs import load_spec
        from ..door import check_against_model, load_model, model_path, settings_key
        from ..library import model_key

        args = self.args
        path = model_path(args)
        check_against_model(args, load_spec(path))
        self.model, self.tokenizer, self.spec, self.config = load_model(args, path)
        self.model_dir = Path(path)
        self.model_id = args.served_model_name or self.model_dir.name
        self.library_keys = (model_key(memories.model_identity(self.model_dir)), settings_key(args, self.config))
        self.stats.capacity = self.config.capacity

    def new_session(self, fps: float | None = None):
        from ..stream.session import StreamSession

        return StreamSession(self.model, self.tokenizer, self.spec, self.config, backend=self.args.backend,
                             fps=fps or self.args.fps, model_dir=self.model_dir)

    # ----- jobs (each runs on the model thread; worker.py) -----------------------------------
    def run(self, job, events: Events) -> None:
        """Run `job(events)`, turning any exception into an `error` event."""
        if events.cancelled.is_set():  # the client left while the job waited: nothing to do
            return
        try:
            job(events)
        except Exception as err:
            events.emit("error", api_error(err))

    def answer(self, req: ChatRequest, clips: list[Clip], events: Events, evidence: bool = False) -> None:
        """Ask `req.question` of its memory; emits ready, the pieces, then done (with `evidence`:
        the moments the answer rests on, evidence.py, as `evidence` in done)."""
        session, held, info = self._memory_for(req, clips)
        with session.scratch() if held else nullcontext():  # a held memory is left as it was
            session.record_evidence = evidence
            done = dict(info, **self._ask(session, req, events))
            if evidence:
                done["evidence"] = [dict(seconds=m.seconds, clock=m.clock, share=m.share, video=m.video)
                                    for m in session.evidence or []]
            self._note_peak(session)
        if req.session is not None:
            self.pool.keep_session(req.session, session)
        with self._lock:
            self.stats.completions += 1
        events.emit("done", done)

    def _ask(self, session, req: ChatRequest, events: Events) -> dict:
        """Decode the answer into `events`; why it stopped and the token counts."""
        prompt = session.cache.n_cached + len(self.tokenizer.encode(req.question, add_special_tokens=False))
        reply = session.ask(req.question, max_tokens=req.max_tokens, temperature=req.temperature,
                            top_p=req.top_p, stop=req.stop)
        events.emit("ready")
        try:
            for piece in reply:
                if events.cancelled.is_set():  # the client went away: stop decoding
                    break
                if piece:
                    events.emit("piece", piece)
        finally:
            reply.close()
        return dict(stop_reason=session.stop_reason, prompt_tokens=prompt,
                    completion_tokens=session.answer_tokens)  # generated, the end token not counted

    def memory_map(self, clips: list[Clip], events: Events) -> None:
        """The memory map (evidence.map_figure) of the clips' memory, as PNG bytes in done."""
        import io

        import matplotlib.pyplot as plt

        from ..stream.evidence import map_figure

        session, _, _ = self._memory_for(ChatRequest("", []), clips)
        fig, png = map_figure(session), io.BytesIO()
        fig.savefig(png, format="png")
        plt.close(fig)
        events.emit("done", png.getvalue())

    def append(self, name: str, sampling: Sampling, clips: list[Clip], events: Events) -> None:
        """Stream `clips` into the named session (made when new); done carries its stats."""
        session = self._named(name, clips, sampling)
        events.emit("done", self._session_facts(name, session))

    def forget(self, name: str, events: Events) -> None:
        if not self.pool.drop_session(name):
            raise ApiError(404, f"no session named {name!r}", "session_not_found", param="name")
        events.emit("done", {"id": name, "object": "session.deleted", "deleted": True})

    def describe(self, name: str, events: Events) -> None:
        session = self.pool.session(name)
        if session is None:
            raise ApiError(404, f"no session named {name!r}; POST frames to /v1/sessions/{name}/frames "
                                "to start it", "session_not_found", param="name")
        events.emit("done", self._session_facts(name, session))

    # ----- where a question's memory comes from ----------------------------------------------
    def _memory_for(self, req: ChatRequest, clips: list[Clip]):
        """(session, held in the pool: ask in scratch, facts for the response)."""
        if req.session is not None:
            return self._named(req.session, clips, req.sampling), False, dict(memory="session", session=req.session)
        key = self._key(clips, req.sampling)
        memory = self.pool.get(key)
        if memory is not None:
            with self._lock:
                self.stats.memory_hits += 1
            return memory.session, True, dict(memory="hit")
        memory = self._from_library(key, clips, req.sampling) or self._encode(key, clips, req.sampling)
        held = self.pool.put(memory)
        return memory.session, True, dict(memory="library" if memory.origin == "library" else "miss", held=held)

    def _key(self, clips: list[Clip], sampling: Sampling) -> str:
        contents = "+".join(c.key for c in clips)
        return f"{contents}|{self.library_keys[1]}|frames={sampling.num_frames}|fps={sampling.fps}"

    def _encode(self, key: str, clips: list[Clip], sampling: Sampling) -> Memory:
        session = self.new_session(sampling.fps)
        for clip in clips:
            self._stream(session, clip, sampling)
        with self._lock:
            self.stats.memory_misses += 1
        self._note_peak(session)
        return Memory(key, session, [c.name for c in clips], "stream")

    def _from_library(self, key: str, clips: list[Clip], sampling: Sampling) -> Memory | None:
        """A memory loaded from --library for one video with the server's own settings, or None."""
        if self.args.library is None or len(clips) != 1 or clips[0].path is None or sampling != Sampling():
            return None
        from ..library import Catalogue

        try:  # a library that went away or a damaged file: the video is streamed instead
            with Catalogue(self.args.library) as catalogue:
                entry = catalogue.lookup(clips[0].key, *self.library_keys)
                file = None if entry is None or entry.status != "done" else catalogue.memory_path(entry)
            if file is None or not file.is_file():
                return None
            session = self.new_session()
            session.load_memory(file)  # checksum, format and model identity verified
        except UserError as err:
            log.warning("library memory not used (%s); streaming the video instead", one_line(err))
            return None
        with self._lock:
            self.stats.library_hits += 1
        return Memory(key, session, [entry.name], "library")

    def _named(self, name: str, clips: list[Clip], sampling: Sampling):
        session = self.pool.session(name)
        if session is None:
            if not clips:
                raise ApiError(404, f"no session named {name!r}; POST its frames to /v1/sessions/{name}/frames "
                                    "first, or send a video with the question", "session_not_found", param="session")
            if self.pool.sessions_full:
                raise ApiError(429, f"{self.pool.max_sessions} live sessions are open (--max-sessions); "
                                    "DELETE /v1/sessions/NAME one first", "too_many_sessions")
            session = self.new_session()
        for clip in clips:
            self._stream(session, clip, sampling)
        self._note_peak(session)
        self.pool.keep_session(name, session)
        return session

    # ----- streaming one clip ----------------------------------------------------------------
    def _stream(self, session, clip: Clip, sampling: Sampling) -> None:
        """Stream a video file or a run of image frames into `session`, as a video segment."""
        c = session.counters
        frames0, vision0, compressions0 = c.frames_seen, c.seconds["vision"], c.compressions
        if clip.path is not None:
            self._stream_file(session, clip, sampling)
        else:
            self._stream_frames(session, clip, sampling)
        session.flush()
        c = session.counters  # (a failed block would have restored a copy of it)
        with self._lock:
            self.stats.videos_encoded += 1
            self.stats.frames_encoded += c.frames_seen - frames0
            self.stats.vision_seconds += c.seconds["vision"] - vision0
            self.stats.compressions += c.compressions - compressions0

    def _stream_file(self, session, clip: Clip, sampling: Sampling) -> None:
        from ..door import fit_source, stream_source
        from ..video.source import VideoSource

        video = VideoSource.for_model(clip.path, self.spec, fps=sampling.fps or session.fps)
        if sampling.num_frames is not None:  # N frames spread over the whole video
            if video.duration:
                video.fps = sampling.num_frames / video.duration
            video.max_frames = sampling.num_frames
        fit_source(session, video, self.args.max_pixels)
        stream_source(session, video, clip.path, clip.name, clip.key)  # hashed once, in media.py

    def _stream_frames(self, session, clip: Clip, sampling: Sampling) -> None:
        from ..door import feed
        from ..video.source import resize_frame

        frames = clip.frames
        if sampling.num_frames is not None and len(frames) > sampling.num_frames:
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, sampling.num_frames).round().astype(int)]
        hw = session.fit_frame_size(frames[0].shape[:2], self.args.max_pixels)
        session.begin_video(clip.name)
        rgb = np.stack([resize_frame(f, hw) for f in frames])  # (n, H, W, 3): BGR in, RGB out
        feed(session, [(rgb, np.arange(len(rgb)) / (sampling.fps or session.fps))])

    # ----- facts -------------------------------------------------------------------------------
    def _note_peak(self, session) -> None:
        with self._lock:
            self.stats.peak_cached = max(self.stats.peak_cached, session.counters.peak_cached)

    def _session_facts(self, name: str, session) -> dict:
        st = session.stats()
        keep = ("frames_seen", "slots_seen", "compressions", "tokens_cached", "capacity", "peak_cached",
                "turns_evicted", "kv_bytes", "seconds")
        return {"id": name, "object": "session", **{k: st[k] for k in keep}}

    def counters(self) -> dict:
        """Counters, the queue and the pool, for GET /v1/stats (reads no array)."""
        with self._lock:
            counters = asdict(self.stats)
        return dict(model=self.model_id, **counters, queue=self.worker.snapshot(), pool=self.pool.snapshot())
