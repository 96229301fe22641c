"""The streaming loop of ALGORITHM.md section 7, shared by the MLX and PyTorch sessions.

The session decides when to compress; the cache only stores; the adapter only embeds and
runs the model. Backend specifics (arrays, sampling, memory probes, the adapter class) sit
behind a small Backend object (protocols.Backend): mlx/backend.py or reference/backend.py.

Units: a frame is one sampled picture; a slot is one temporal step of the vision grid
(Qwen2.5-VL merges frames_per_slot = 2 sampled frames into one; the authors' code calls
it a frame). `block_slots` counts slots; add_frames takes sampled frames. T = visual tokens per slot, S = slots in a block.

Memory (ALGORITHM.md section 3): every token that enters the cache is counted, and the
cap holds after every forward (`check_cap=True`, or INFINIPOT_CHECK_CAP=1, asserts it).
What gives way when room runs out (the video down to its floor, then old turns) is
room.py's; the answer loop is answer.py's.

Interrupts: each block, text piece, question and answer token is a transaction. An
exception inside one (KeyboardInterrupt included) restores the cache and the session's
counters as they were before it, and the frames of an unfinished block stay queued.

Position policies (ALGORITHM.md section 6): `absolute` keeps every token at the position
the uncompressed sequence gives it; `compact` (1-D RoPE models only) renumbers the kept
tokens 0..n-1 in arrival order after every compression, re-rotating their stored keys with
the adapter's `key_rotation()`, so positions stay below the capacity. Either way a stream
about to pass the model's max_positions stops with PositionLimitError.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..contract import plan
from .answer import AnswerLoop, Undo
from ..contract.config import DEFAULT_FPS, InfiniPotConfig
from ..errors import UserError
from .feed import VideoFeed
from .locking import serialized
from ..contract.positions import next_after, text_positions
from .protocols import Backend, make_backend
from .room import RoomKeeper, Turn, compress_layers
from ..contract.specs import DEFAULT_SYSTEM


class PositionLimitError(UserError):
    """A stream under `absolute` positions would pass the model's trained range."""


class CapBrokenError(AssertionError):
    """The cache held more tokens than the capacity after a forward: a bug, never bad input."""


@dataclass
class StreamStats:
    """Counters and timers of a session (seconds are wall time on this machine)."""

    frames_seen: int = 0  # sampled frames given to add_frames and encoded
    frames_dropped: int = 0  # sampled frames a live source lost while the model was behind (reader.py)
    slots_seen: int = 0  # temporal slots (the authors' "frames")
    compressions: int = 0
    tokens_decoded: int = 0
    turns_evicted: int = 0  # old conversation turns dropped to keep the video above its floor
    peak_cached: int = 0  # the most tokens the cache held after any forward
    seconds: dict = field(default_factory=lambda: dict(vision=0.0, prefill=0.0, compress=0.0, decode=0.0))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "off", "no")


class StreamSession(VideoFeed, RoomKeeper, AnswerLoop):
    """Stream frames into a capped KV cache and answer questions, many turns.

    Args:
        model, tokenizer, spec: a loaded checkpoint (mlx.backend.load_model or
            reference.backend.load_model); the backend wraps them in its adapter.
        config: InfiniPotConfig (default InfiniPotConfig()).
        backend: "mlx" (default), "reference", or a protocols.Backend object.
        fps: sampling rate of frames given to add_frames without timestamps.
        system_prompt: the system message (pinned).
        record_kept: keep the (slot, patch) sets of every compression, for parity checks.
        check_cap: assert n_cached <= capacity after every forward (default: the
            INFINIPOT_CHECK_CAP environment variable; the tests set it).
    """

    record_evidence = False  # when True, every answer's evidence (evidence.py) is kept in .evidence
    _attend = False  # set around the question's forward when evidence is recorded

    def __init__(self, model, tokenizer, spec, config: InfiniPotConfig | None = None,
                 backend: str | Backend = "mlx", fps: float = DEFAULT_FPS, system_prompt: str = DEFAULT_SYSTEM,
                 record_kept: bool = False, check_cap: bool | None = None, model_dir=None):
        self.backend = make_backend(backend)
        self.model_dir = model_dir  # the checkpoint folder, which a saved memory is checked against
        self._lock = threading.RLock()  # public methods run one at a time (locking.py)
        self.adapter = self.backend.adapter(model, tokenizer, spec)
        self.config = config or InfiniPotConfig()
        self.spec = self.adapter.spec
        self.fps = float(fps)
        self.system_prompt = system_prompt
        self.record_kept = record_kept
        self.check_cap = _env_flag("INFINIPOT_CHECK_CAP") if check_cap is None else check_cap
        self.config.check_head_dim(self.spec.head_dim)  # --kv-group-size must divide it
        if self.policy == "compact" and self.spec.position_axes != 1:
            raise UserError(f"the compact position policy needs a 1-D RoPE model (LLaVA-OneVision); "
                            f"{self.spec.model_type} uses M-RoPE, so use position_policy='absolute'")
        self.reset()

    # ----- conversation state ------------------------------------------------------
    @serialized
    def reset(self) -> None:
        """Drop everything and start again from the system prompt."""
        self._clear()
        self.add_text(self.spec.pieces.system.format(system=self.system_prompt))
        self.n_system = self.cache.n_pinned

    def _clear(self) -> None:
        """An empty cache and a fresh state, with nothing prefilled (reset; a memory load)."""
        self.cache = self.backend.new_cache(self.spec.num_layers)
        self.cache.maybe_quantize(self.config)  # --kv-bits from the first token (quantized_kv_start 0)
        self.counters = StreamStats()
        self.kept_log: list[list[np.ndarray]] = []  # per compression, per layer (H, K, 2)
        self.transcript: list[str] = []  # every pinned text piece and video placeholder
        self.turns = [Turn(0, 0)]  # turn 0 is the system prompt and is never dropped
        self.pending: list[tuple[np.ndarray, float | None]] = []  # (frame, timestamp) queued
        self.frame_hw: tuple[int, int] | None = None
        self.block_slots: int | None = self.config.block_slots  # None: chosen at the first frame (when its size is known)
        self.user_turn_open = False
        self.video_start: int | None = None  # position offset of the open video segment
        self.segment_slots = 0  # slots streamed in the open video segment
        self.segment_t0: float | None = None  # timestamp of the open segment's first frame
        self.open_answer: list[int] | None = None  # tokens of an answer not yet closed
        self.unfed: int | None = None  # its last token, when it was never fed to the model
        self.stop_reason: str | None = None
        self.slot_seconds: list[float] = []  # source time of each slot's first frame (slot_ids index it)
        self.slot_video: list[int] = []  # which of `videos` each slot came from
        self.videos: list[dict] = []  # one per video segment: name, content hash (add_video)
        self._next_video = None  # begin_video names the video the next frames open (feed.py)
        self.video_t0: float | None = None  # timestamp of the open video's first frame
        self.video_slots_before = 0  # slots of the open video in segments before the open one
        self.attention = None  # (per layer (H_kv, n) mass, slot ids) of the last question (evidence)
        self.evidence = None  # the moments the last answer rests on, when record_evidence
        self.backend.reset_peak_memory()

    @property
    def policy(self) -> str:
        policy = self.config.position_policy
        return self.spec.default_policy if policy == "auto" else policy

    @property
    def frames_per_block(self) -> int | None:
        """Sampled frames per block (None until the frame size is known, when automatic)."""
        return None if self.block_slots is None else self.block_slots * self.spec.frames_per_slot

    # ----- transactions --------------------------------------------------------------
    _STATE = ("transcript", "turns", "pending", "frame_hw", "block_slots", "user_turn_open",
              "video_start", "segment_slots", "segment_t0", "open_answer", "unfed", "counters",
              "slot_seconds", "slot_video", "videos", "_next_video", "video_t0", "video_slots_before")

    @contextmanager
    def _atomic(self):
        """All or nothing: an exception inside (Ctrl-C included) restores the state before it."""
        saved = (self.cache.snapshot(), len(self.kept_log),
                 {name: copy.copy(getattr(self, name)) for name in self._STATE})
        saved[2]["counters"].seconds = dict(self.counters.seconds)
        try:
            yield
        except BaseException:
            cache, kept, state = saved
            self.cache.restore(cache)
            del self.kept_log[kept:]
            for name, value in state.items():
                setattr(self, name, value)
            raise

    @contextmanager
    def scratch(self):
        """Whatever the block does (a question, its answer, compressions, dropped turns) is
        undone when it ends or fails: a question asked of a memory that must stay as it was."""
        with self._lock:
            try:
                with self._atomic():
                    yield
                    raise Undo
            except Undo:
                pass

    # ----- text ----------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.adapter.tokenizer.encode(text, add_special_tokens=False)

    def add_text(self, text: str):
        """Prefill pinned text; returns the logits of its last token, shape (V,)."""
        return self._prefill_text(text, self._encode(text))

    def _prefill_text(self, text: str, ids: list[int]):
        """Pin `text` (tokenized as `ids`) after making room for it under the cap."""
        with self._atomic():
            self.transcript.append(text)
            if not ids:
                return None  # an empty template piece adds nothing
            if not self._make_room(len(ids)):
                raise plan.CapacityError(
                    f"no room under the KV cap of {self.config.capacity} tokens for {len(ids)} more "
                    f"pinned tokens ({self.cache.n_pinned} pinned, {self.cache.n_visual} visual at "
                    "their floor); raise --kv-budget")
            return self._prefill_ids(ids)

    def _prefill_ids(self, ids, wait: bool = True):
        """Pin token ids (a list, or one backend token still computing); (V,) last logits.
        wait=False leaves the forward to be computed when its result is needed."""
        n = len(ids) if isinstance(ids, list) else 1
        self._renumber_if_needed(n)
        positions = text_positions(self.cache.next_position, n, self.spec.position_axes)
        logits = self._forward(self.adapter.embed_tokens(ids), positions, wait=wait)
        return logits[0, -1]

    def _forward(self, embeds, positions: np.ndarray, slot_ids=None, patch_ids=None, wait: bool = True,
                 extra: dict | None = None):
        """Run the model over new tokens labelled (slot_ids, patch_ids) (pinned when None);
        extra: the adapter's forward keywords for a block (Qwen3-VL's DeepStack)."""
        self._check_position_range(positions)
        if slot_ids is not None:
            self.cache.label_next(slot_ids, patch_ids)
        if self._attend:  # the question's forward, for evidence (answer.py, evidence.py)
            logits, masses = self.adapter.forward_attending(embeds, positions, self.cache)
            self.attention = (masses, [layer.slot_ids.copy() for layer in self.cache.layers])
        else:
            logits = self.adapter.forward(embeds, positions, self.cache, **(extra or {}))
        if wait:
            self.backend.sync(logits, self.cache)
        self.cache.next_position = max(self.cache.next_position, next_after(positions))
        self.cache.maybe_quantize(self.config)  # once it holds --quantized-kv-start tokens
        n = self.cache.n_cached
        self.counters.peak_cached = max(self.counters.peak_cached, n)
        if self.check_cap and self.config.bounded and n > self.config.capacity:
            raise CapBrokenError(f"the cache holds {n} tokens, over its capacity of {self.config.capacity}")
        return logits

    def _check_position_range(self, positions) -> None:
        """PositionLimitError before any token would get a position past max_positions."""
        limit = self.spec.max_positions
        if limit is None or int(np.max(positions)) < limit:
            return
        if self.policy == "compact":
            hint = "lower the capacity (--kv-budget) below that range"
        elif self.spec.position_axes == 1:
            hint = "stop here, or use the compact position policy (the default for this model)"
        else:
            hint = "stop here or lower --fps"
        raise PositionLimitError(f"the stream would reach position {int(np.max(positions))}, past the "
                                 f"model's trained range of {limit} positions; {hint}")

    # ----- compression -----------------------------------------------------------------
    def compress(self, keep: int, tokens_per_slot: int) -> None:
        """Keep `keep` visual tokens per head in every layer (ALGORITHM.md sections 4-5)."""
        plan.check_keep(keep, tokens_per_slot)
        with self._atomic(), self._timed("compress"):
            kept_sets = compress_layers(self.cache, self.backend, keep, tokens_per_slot, self.config,
                                        self.spec.slot_grid(self.frame_hw), self.record_kept)
            self.backend.sync(None, self.cache)
            self.counters.compressions += 1
            if self.record_kept:
                self.kept_log.append(kept_sets)

    def _renumber_if_needed(self, incoming: int) -> None:
        """`compact`: renumber only when `incoming` more positions would pass the model's
        trained range, so that stored keys are re-rotated, and rounded again, rarely."""
        limit = self.spec.max_positions
        if self.policy == "compact" and limit is not None and self.cache.next_position + incoming > limit:
            if self.cache.quantized:  # re-rotating a quantized key would quantize it twice
                raise PositionLimitError(
                    f"the stream would pass the model's trained range of {limit} positions, and a cache "
                    "stored at --kv-bits cannot renumber its positions (its keys would be quantized "
                    "twice); stop here, or stream without --kv-bits")
            self._compact_positions()

    def _compact_positions(self) -> None:
        """`compact`: renumber the n kept slots 0..n-1 in arrival order (every head), re-rotate keys."""
        n = self.cache.n_cached
        shift = n - self.cache.next_position  # <= 0: every position moves down by the same rule
        self.cache.rerotate(np.arange(n), self.adapter.key_rotation())
        self.cache.next_position = n
        if self.video_start is not None:  # the open segment's origin moves with its tokens
            self.video_start += shift

    # ----- memories on disk (memories.py) -------------------------------------------------
    @serialized
    def save(self, path):
        """Write this session's memory to `path`, atomically; returns the path."""
        from . import memory_file as memories

        return memories.save(self, path)

    @serialized
    def load_memory(self, path) -> None:
        """Continue from a memory file made with this model and backend (verified first)."""
        from . import memory_file as memories

        meta, tensors = memories.read(path)
        memories.check_model(meta, memories.identity(self), path)
        memories.restore(self, meta, tensors)

    # ----- reporting ------------------------------------------------------------------------
    @contextmanager
    def _timed(self, what: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.counters.seconds[what] += time.perf_counter() - start

    def stats(self) -> dict:
        """Frames seen, tokens cached, compressions, memory and time per phase."""
        active, peak = self.backend.memory()
        s = self.counters
        return dict(
            frames_seen=s.frames_seen, frames_dropped=s.frames_dropped, slots_seen=s.slots_seen, compressions=s.compressions,
            tokens_cached=self.cache.n_cached, tokens_pinned=self.cache.n_pinned,
            tokens_visual=self.cache.n_visual, capacity=self.config.capacity,
            peak_cached=s.peak_cached, turns_evicted=s.turns_evicted, frames_queued=len(self.pending),
            kv_bytes=self.cache.nbytes, kv_bits=self.cache.layers[0].bits if self.cache.quantized else None,
            next_position=self.cache.next_position,
            active_memory_bytes=active, peak_memory_bytes=peak, tokens_decoded=s.tokens_decoded,
            seconds=dict(s.seconds), method=self.config.method, position_policy=self.policy,
        )

    def prompt_text(self) -> str:
        """Everything pinned now, with each video block shown as <video:SxT>."""
        return "".join(self.transcript)
