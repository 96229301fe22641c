"""The streaming loop of ALGORITHM.md section 7, shared by the MLX and PyTorch sessions.

The session decides when to compress; the cache only stores; the adapter only embeds and
runs the model. Backend specifics (arrays, sampling, memory probes) sit behind a small
Backend object, so session.py and reference/session.py differ only in what they plug in.

Units: a "frame" in the algorithm's sense is one temporal slot of the vision grid
(Qwen2.5-VL merges frames_per_slot = 2 sampled frames into one). `block_frames` counts
slots; add_frames takes sampled frames. T = visual tokens per slot, S = slots in a block.

Position policies (ALGORITHM.md section 6): `absolute` keeps every token at the position
the uncompressed sequence gives it; `compact` (1-D RoPE models only) renumbers the kept
tokens 0..n-1 in arrival order after every compression, re-rotating their stored keys with
the adapter's `key_rotation()`, so positions stay below the capacity. Either way a stream
about to pass the model's max_positions stops with PositionLimitError.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import plan
from .config import InfiniPotConfig
from .positions import next_after, text_positions
from .specs import DEFAULT_SYSTEM


class PositionLimitError(ValueError):
    """A stream under `absolute` positions would pass the model's trained range."""


@dataclass
class StreamStats:
    """Counters and timers of a session (seconds are wall time on this machine)."""

    frames_seen: int = 0  # sampled frames given to add_frames and encoded
    slots_seen: int = 0  # temporal slots ("frames" of the algorithm)
    compressions: int = 0
    tokens_decoded: int = 0
    seconds: dict = field(default_factory=lambda: dict(vision=0.0, prefill=0.0, compress=0.0, decode=0.0))


class StreamSessionBase:
    """Stream frames into a capped KV cache and answer questions, many turns.

    Args:
        adapter: the model adapter (adapters/ or reference/adapters/).
        backend: array-library hooks (see session.MLXBackend).
        config: InfiniPotConfig.
        fps: sampling rate of the frames given to add_frames (positions use absolute time).
        system_prompt: the system message (pinned).
        record_kept: keep the (frame, patch) sets of every compression, for parity checks.
    """

    def __init__(self, adapter, backend, config: InfiniPotConfig, fps: float = 2.0,
                 system_prompt: str = DEFAULT_SYSTEM, record_kept: bool = False):
        self.adapter, self.backend, self.config = adapter, backend, config
        self.spec = adapter.spec
        self.fps = float(fps)
        self.system_prompt = system_prompt
        self.record_kept = record_kept
        if self.policy == "compact" and self.spec.position_axes != 1:
            raise ValueError(f"the compact position policy needs a 1-D RoPE model (LLaVA-OneVision); "
                             f"{self.spec.model_type} uses M-RoPE, so use position_policy='absolute'")
        self.reset()

    # ----- conversation state ------------------------------------------------------
    def reset(self) -> None:
        """Drop everything and start again from the system prompt."""
        self.cache = self.backend.new_cache(self.spec.num_layers)
        self.counters = StreamStats()
        self.kept_log: list[list[np.ndarray]] = []  # per compression, per layer (H, K, 2)
        self.transcript: list[str] = []  # every pinned text piece and video placeholder
        self.pending: list[np.ndarray] = []  # sampled frames waiting for a full block
        self.frame_hw: tuple[int, int] | None = None
        self.user_turn_open = False
        self.video_start: int | None = None  # position offset of the open video segment
        self.segment_slots = 0  # slots streamed in the open video segment
        self.backend.reset_peak_memory()
        self.add_text(self.spec.pieces.system.format(system=self.system_prompt))

    @property
    def policy(self) -> str:
        policy = self.config.position_policy
        return self.spec.default_policy if policy == "auto" else policy

    # ----- text ----------------------------------------------------------------------
    def add_text(self, text: str):
        """Prefill pinned text; returns the logits of its last token, shape (V,)."""
        self.transcript.append(text)
        ids = self.adapter.tokenizer.encode(text, add_special_tokens=False)
        return self._prefill_ids(ids) if ids else None  # an empty template piece adds nothing

    def _prefill_ids(self, ids: list[int]):
        positions = text_positions(self.cache.next_position, len(ids), self.spec.position_axes)
        logits = self._forward(self.adapter.embed_tokens(ids), positions)
        return logits[0, -1]

    def _forward(self, embeds, positions: np.ndarray, frame_ids=None, patch_ids=None):
        self._check_position_range(positions)
        if frame_ids is not None:
            self.cache.label_next(frame_ids, patch_ids)
        logits = self.adapter.forward(embeds, positions, self.cache)
        self.backend.sync(logits, self.cache)
        self.cache.next_position = max(self.cache.next_position, next_after(positions))
        return logits

    # ----- frames ----------------------------------------------------------------------
    def add_frames(self, frames: np.ndarray) -> None:
        """Queue sampled frames (n, H, W, 3) uint8; every full block is encoded and prefilled."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        self._check_frame_size(frames)
        self.pending.extend(frames)
        block = self.config.block_frames * self.spec.frames_per_slot
        while len(self.pending) >= block:
            chunk, self.pending = self.pending[:block], self.pending[block:]
            self._stream_block(np.stack(chunk))

    def flush(self) -> None:
        """Encode queued frames that do not fill a block (the last one is repeated to fill a slot)."""
        if not self.pending:
            return
        frames, self.pending = np.stack(self.pending), []
        pad = -len(frames) % self.spec.frames_per_slot
        real = len(frames)
        if pad:
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        self._stream_block(frames, real_frames=real)

    def _check_frame_size(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (n, H, W, 3) RGB, got shape {frames.shape}")
        hw = tuple(frames.shape[1:3])
        step, fixed = self.spec.pixels_per_token, self.spec.frame_size
        if fixed is not None and hw != tuple(fixed):
            raise ValueError(f"frame size {hw} is not the model's {tuple(fixed)}; resize with "
                             f"VideoSource(size={tuple(fixed)})")
        if fixed is None and (hw[0] % step or hw[1] % step):
            raise ValueError(f"frame size {hw} is not a multiple of {step} pixels; resize with VideoSource")
        if self.frame_hw is not None and hw != self.frame_hw:
            raise ValueError(f"frame size changed from {self.frame_hw} to {hw} within a stream")
        if self.frame_hw is None:  # reject a budget that cannot hold one block, up front
            self.config.check_fits(self.spec.tokens_per_slot(hw), self.cache.n_pinned)
        self.frame_hw = hw

    def _open_video(self) -> None:
        if self.video_start is not None:
            return
        if not self.user_turn_open:
            self.add_text(self.spec.pieces.user_open)
            self.user_turn_open = True
        self.add_text(self.spec.pieces.video_open)
        self.video_start, self.segment_slots = self.cache.next_position, 0

    def _close_video(self) -> None:
        if self.video_start is not None:
            self._prefill_video_tail()
            self.add_text(self.spec.pieces.video_close)
            self.video_start = None

    def _prefill_video_tail(self) -> None:
        """Pinned embeddings the model puts once after a video (LLaVA-OV: image_newline).

        An optional adapter hook, `video_close_embeds() -> (1, L, E) or None`.
        """
        hook = getattr(self.adapter, "video_close_embeds", None)
        embeds = hook() if hook is not None else None
        if embeds is not None:
            self._forward(embeds, text_positions(self.cache.next_position, embeds.shape[-2],
                                                 self.spec.position_axes))
            self.transcript.append("<video_end_embeds>")

    def _stream_block(self, frames: np.ndarray, real_frames: int | None = None) -> None:
        """Compress if the block would overflow, then vision on the block, then prefill it."""
        self._open_video()
        grid = self.spec.slot_grid(self.frame_hw)
        T, S = grid[0] * grid[1], len(frames) // self.spec.frames_per_slot
        if self.config.bounded and plan.needs_compression(
            self.cache.n_cached, S * T, self.config.capacity, self.config.reserve
        ):  # first, so that `compact` positions are known before the block's are computed
            self.compress(plan.keep_target(self.config.capacity, self.config.reserve,
                                           self.cache.n_pinned, S * T), T)
        positions = self.adapter.video_positions(self.video_start, self.segment_slots, S, grid, self.fps)
        self._check_position_range(positions)
        with self._timed("vision"):
            embeds = self.adapter.encode_slots(frames)
            self.backend.sync(embeds)
        first = self.counters.slots_seen
        frame_ids = np.repeat(np.arange(first, first + S, dtype=np.int32), T)  # (S*T,)
        patch_ids = np.tile(np.arange(T, dtype=np.int32), S)  # (S*T,)
        with self._timed("prefill"):
            self._forward(embeds, positions, frame_ids, patch_ids)
        self.transcript.append(f"<video:{S}x{T}>")
        self.segment_slots += S
        self.counters.slots_seen += S
        self.counters.frames_seen += real_frames if real_frames is not None else len(frames)

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
    def compress(self, keep: int, tokens_per_frame: int) -> None:
        """Keep `keep` visual tokens per head in every layer (ALGORITHM.md sections 4-5)."""
        plan.check_keep(keep, tokens_per_frame)
        cfg, layers = self.config, self.cache.layers
        kept_sets = []
        with self._timed("compress"):
            for layer_idx, layer in enumerate(layers):
                _, keys, values, frame_ids, patch_ids = layer.visual()
                if keys.shape[1] <= keep:
                    continue
                kept = self.backend.select_tokens(
                    keys, values, tokens_per_frame=tokens_per_frame, keep=keep, method=cfg.method,
                    tar_ratio=cfg.tar_ratio, recent_ratio=cfg.recent_ratio,
                    frame_ids=frame_ids, patch_ids=patch_ids, van_pooling=cfg.van_pooling,
                    layer_idx=layer_idx, num_layers=len(layers), grid_hw=self.spec.slot_grid(self.frame_hw),
                )
                if self.record_kept:
                    kept_np = self.backend.to_numpy(kept)
                    kept_sets.append(np.stack([np.take_along_axis(frame_ids, kept_np, 1),
                                               np.take_along_axis(patch_ids, kept_np, 1)], -1))
                layer.compress(kept)
            if self.policy == "compact":
                self._compact_positions()
            self.backend.sync(None, self.cache)
        self.counters.compressions += 1
        if self.record_kept:
            self.kept_log.append(kept_sets)

    def _compact_positions(self) -> None:
        """`compact`: renumber the n kept slots 0..n-1 in arrival order (every head), re-rotate keys."""
        n = self.cache.n_cached
        shift = n - self.cache.next_position  # <= 0: every position moves down by the same rule
        self.cache.rerotate(np.arange(n), self.adapter.key_rotation())
        self.cache.next_position = n
        if self.video_start is not None:  # the open segment's origin moves with its tokens
            self.video_start += shift

    # ----- questions ---------------------------------------------------------------------
    def ask(self, question: str, max_tokens: int = 256, temperature: float = 0.0,
            top_p: float = 1.0, stop: tuple[str, ...] = ()) -> Iterator[str]:
        """Ask about everything streamed so far; yields the answer's text as it is decoded.

        The question and the answer are pinned; frames may keep arriving afterwards.
        Greedy by default; temperature > 0 samples (top_p < 1 for nucleus sampling).
        """
        if not question or not question.strip():
            raise ValueError("the question is empty; type a question about the video")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.flush()
        self._close_video()
        pieces = self.spec.pieces
        text = ("" if self.user_turn_open else pieces.user_open) + question.strip() + pieces.question_close
        ids = self.adapter.tokenizer.encode(text, add_special_tokens=False)
        self._make_room(len(ids) + max_tokens)
        tail = self.adapter.tokenizer.encode(pieces.answer_close, add_special_tokens=False)
        self._check_position_range([self.cache.next_position + len(ids) + max_tokens + len(tail) - 1])
        self.transcript.append(text)
        self.user_turn_open = False
        return self._generate(ids, max_tokens, temperature, top_p, stop)

    def _make_room(self, needed: int) -> None:
        """Compress before a question if it and its answer would pass the cap."""
        cfg = self.config
        if cfg.bounded and self.cache.n_cached + needed > cfg.capacity and self.cache.n_visual:
            T = self.spec.tokens_per_slot(self.frame_hw)
            self.compress(cfg.capacity - self.cache.n_pinned - needed, T)

    def _generate(self, ids, max_tokens, temperature, top_p, stop) -> Iterator[str]:
        tok = self.adapter.tokenizer
        eos = set(self.backend.eos_ids(tok, self.spec.pieces.eos))
        sampler = self.backend.make_sampler(temperature, top_p)
        logits = self._prefill_ids(ids)
        self.question_logits = self.backend.to_numpy(logits)  # (V,), kept for parity checks
        answer: list[int] = []
        shown, last, finished_by_eos = "", None, False  # shown: the text yielded so far
        try:
            for _ in range(max_tokens):
                with self._timed("decode"):
                    token = sampler(logits)
                if token in eos:
                    finished_by_eos = True
                    break
                answer.append(token)
                text = tok.decode(answer, skip_special_tokens=True)
                cut = _first_stop(text, stop)
                if cut is not None or len(answer) == max_tokens:
                    last = token
                    yield text[:cut][len(shown):]
                    shown = text[:cut]
                    break
                if not text.endswith("\ufffd"):  # hold back a partial UTF-8 character
                    yield text[len(shown):]
                    shown = text
                with self._timed("decode"):
                    logits = self._prefill_ids([token])
                self.counters.tokens_decoded += 1
            if finished_by_eos and answer:
                yield tok.decode(answer, skip_special_tokens=True)[len(shown):]
        finally:
            self._close_answer(last, finished_by_eos, answer)

    def _close_answer(self, last, finished_by_eos: bool, answer: list[int]) -> None:
        """Pin the answer's end so the next turn sees a well-formed conversation."""
        tail = self.adapter.tokenizer.encode(self.spec.pieces.answer_close, add_special_tokens=False)
        if last is not None and not finished_by_eos:
            tail = [last] + tail
        self.transcript.append(self.adapter.tokenizer.decode(answer) + self.spec.pieces.answer_close)
        self._prefill_ids(tail)

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
            frames_seen=s.frames_seen, slots_seen=s.slots_seen, compressions=s.compressions,
            tokens_cached=self.cache.n_cached, tokens_pinned=self.cache.n_pinned,
            tokens_visual=self.cache.n_visual, capacity=self.config.capacity,
            kv_bytes=self.cache.nbytes, next_position=self.cache.next_position,
            active_memory_bytes=active, peak_memory_bytes=peak, tokens_decoded=s.tokens_decoded,
            seconds=dict(s.seconds), method=self.config.method, position_policy=self.policy,
        )

    def prompt_text(self) -> str:
        """Everything pinned so far, with each video block shown as <video:SxT>."""
        return "".join(self.transcript)


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
