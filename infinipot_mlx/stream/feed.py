"""The frame side of a StreamSession (a mixin of session.StreamSession): videos and frames
in, blocks out. Frames queue until a block is full; each block makes room under the cap,
runs the vision tower once and is prefilled at its positions (ALGORITHM.md section 7).

Every slot's source time (its first frame's timestamp, or slot * frames_per_slot / fps
without timestamps) and video are recorded in `slot_seconds` and `slot_video`, indexed by
the frame ids the cache labels its rows with; `videos` names each video.

A question closes the open segment (the model reads the question after the video), but not
the video: the next frames continue it as a new segment of the same video (the same entry
in `videos`, its name and content hash; slot times go on from the video's first frame, and
so do Qwen3-VL's timestamps). Only begin_video starts another video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import plan
from ..errors import UserError
from .locking import serialized
from ..contract.positions import (slot_seconds, slot_text_positions, slot_times, text_positions, video_positions)
from ..contract.rows import SLOT_TEXT


def describe_source(source, name: str | None = None, content: str | None = None) -> dict:
    """{'name', 'content'} of a video source: a file's name and sampled content hash (either
    given when the caller knows it already, so a file is not hashed twice)."""
    from .memory_file import content_hash

    is_file = isinstance(source, (str, Path)) and Path(source).is_file()
    described = dict(name=name or (Path(source).name if is_file else str(source)))
    if content or is_file:
        described["content"] = content or content_hash(source)
    return described


class VideoFeed:
    """open_video, add_video, add_frames, flush: what streams frames into the session."""

    _next_video: dict | None = None  # what the next frames open: begin_video's new video, or
    # {"resume": index} after a question closed the segment of video `index`

    def open_video(self, source, max_frames: int | None = None, max_pixels: int | None = None):
        """A VideoSource of a file, camera index or URL at the session's fps, its frames and
        the block sized for the cap (fit_frame_size)."""
        from ..video.source import VideoSource

        video = VideoSource.for_model(source, self.spec, fps=self.fps, max_frames=max_frames)
        video.frame_size = self.fit_frame_size(video.source_size, max_pixels)
        return video

    @serialized
    def add_video(self, source, max_frames: int | None = None, max_pixels: int | None = None) -> None:
        """Stream a whole video (open_video), block by block, with its frames' own timestamps,
        as a segment of its own: the memory records its name and content hash."""
        stream_source(self, self.open_video(source, max_frames, max_pixels), source)

    @serialized
    def begin_video(self, source, name: str | None = None, content: str | None = None) -> None:
        """Start a new video segment for `source` (a file: its name and content hash are
        recorded, or the `name` and `content` hash given): the open segment, if any, is closed
        first, as a new file's time restarts."""
        if self.pending:
            self.flush()
        self._close_video()
        self._next_video = describe_source(source, name, content)

    @serialized
    def add_frames(self, frames: np.ndarray, timestamps=None) -> None:
        """Queue sampled frames (n, H, W, 3) uint8; every full block is encoded and prefilled.

        timestamps: (n,) seconds of each frame (VideoSource's FrameBlock.timestamps); M-RoPE
        time then follows them. Without them, frames are taken as sampled at `fps`.
        """
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        self._check_frame_size(frames)
        stamps = [None] * len(frames) if timestamps is None else [float(t) for t in np.ravel(timestamps)]
        if len(stamps) != len(frames):
            raise UserError(f"{len(stamps)} timestamps for {len(frames)} frames")
        self.pending.extend(zip(frames, stamps))
        while len(self.pending) >= self.frames_per_block:
            self._stream_block(self.frames_per_block)

    @serialized
    def flush(self) -> None:
        """Encode queued frames that do not fill a block (the last one is repeated to fill a slot)."""
        if self.pending:
            self._stream_block(len(self.pending))

    def _check_frame_size(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UserError(f"frames must be (n, H, W, 3) RGB, got shape {frames.shape}")
        hw = tuple(frames.shape[1:3])
        step, fixed = self.spec.pixels_per_token, self.spec.frame_size
        if fixed is not None and hw != tuple(fixed):
            raise UserError(f"frame size {hw} is not the model's {tuple(fixed)}; resize with "
                            f"VideoSource(size={tuple(fixed)})")
        if fixed is None and (hw[0] % step or hw[1] % step):
            raise UserError(f"frame size {hw} is not a multiple of {step} pixels; resize with VideoSource")
        if self.frame_hw is not None and hw != self.frame_hw:
            raise UserError(f"frame size changed from {self.frame_hw} to {hw} within a stream")
        if self.frame_hw is None:  # choose the block, or reject a cap that cannot hold one, up front
            self._fit_block(hw)
            self.frame_hw = hw

    def _open_video(self) -> None:
        if self.video_start is not None:
            return
        self._close_open_answer()
        if not self.user_turn_open:
            self._begin_turn()
            self.add_text(self.spec.pieces.user_open)
            self.user_turn_open = True
        self.add_text(self.spec.pieces.video_open)
        following, self._next_video = self._next_video, None
        if following is not None and "resume" in following:  # after a question: the same video
            self.video_slots_before += self.segment_slots
        else:
            self.videos.append(following or {"name": "frames"})
            self.video_t0, self.video_slots_before = None, 0
        self.video_start, self.segment_slots, self.segment_t0 = self.cache.next_position, 0, None

    def _close_video(self, resume: bool = False) -> None:
        """Close the open segment; with `resume` (a question), the next frames go on with its video."""
        if self.video_start is not None:
            self._prefill_video_tail()
            self.add_text(self.spec.pieces.video_close)
            self.video_start = None
            if resume and self._next_video is None:
                self._next_video = {"resume": len(self.videos) - 1}

    def _prefill_video_tail(self) -> None:
        """Pinned embeddings the model puts once after a video (LLaVA-OV: image_newline)."""
        embeds = self.adapter.video_close_embeds()  # (1, L, E) or None
        if embeds is not None:
            with self._atomic():
                if not self._make_room(embeds.shape[-2]):
                    raise plan.CapacityError("no room under the KV cap to close the video; raise --kv-budget")
                self._renumber_if_needed(embeds.shape[-2])
                self._forward(embeds, text_positions(self.cache.next_position, embeds.shape[-2],
                                                     self.spec.position_axes))
                self.transcript.append("<video_end_embeds>")

    def _stream_block(self, n_frames: int) -> None:
        """The first n_frames queued frames as one block: make room, vision, prefill (atomic)."""
        with self._atomic():
            items, self.pending = self.pending[:n_frames], self.pending[n_frames:]
            frames = np.stack([f for f, _ in items])
            pad = -len(frames) % self.spec.frames_per_slot  # repeat the last frame to fill a slot
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)]) if pad else frames
            self._open_video()
            grid = self.spec.slot_grid(self.frame_hw)
            T, S = grid[0] * grid[1], len(frames) // self.spec.frames_per_slot
            stamps = [t for _, t in items]
            times = self._slot_times(stamps, S)
            texts = self._slot_texts(stamps, S) if self.spec.pieces.slot_text else None
            n_text = sum(len(lead) + len(trail) for lead, trail in texts) if texts else 0
            self._room_for_block(S, T, n_text)
            self._renumber_if_needed(S * T + n_text)
            if texts:
                positions = slot_text_positions(self.cache.next_position, [len(a) for a, _ in texts],
                                                [len(b) for _, b in texts], grid)
            else:
                positions = video_positions(self.spec, self.video_start, self.segment_slots, times, grid)
            self._check_position_range(positions)
            with self._timed("vision"):
                visual = self.adapter.encode_slots(frames)
                self.backend.sync(visual)
            slot_ids, patch_ids = self._block_labels(S, T, texts)
            embeds, extra = self.adapter.splice_slot_text(visual, texts) if texts else (visual, {})
            with self._timed("prefill"):
                self._forward(embeds, positions, slot_ids, patch_ids, extra=extra)
            self.transcript.append(f"<video:{S}x{T}>")
            self.slot_seconds.extend(self._video_seconds(times).tolist())  # _atomic copies both
            self.slot_video.extend([len(self.videos) - 1] * S)
            self.segment_slots += S
            self.counters.slots_seen += S
            self.counters.frames_seen += len(items)

    def _block_labels(self, S: int, T: int, texts) -> tuple[np.ndarray, np.ndarray]:
        """(slot_ids, patch_ids) (L,) of a block's rows: its S slots' T visual tokens each, with
        each slot's text (leading, trailing; none without texts) as SLOT_TEXT rows of that slot."""
        first = self.counters.slots_seen
        slots, patches = [], []
        for s, (lead, trail) in enumerate(texts or [([], [])] * S):
            slots.append(np.full(len(lead) + T + len(trail), first + s, np.int32))
            patches += [np.full(len(lead), SLOT_TEXT, np.int32), np.arange(T, dtype=np.int32),
                        np.full(len(trail), SLOT_TEXT, np.int32)]
        return np.concatenate(slots), np.concatenate(patches)

    def _slot_texts(self, stamps: list[float | None], S: int) -> list[tuple[list[int], list[int]]]:
        """Each slot's text as token ids (leading, trailing): its time, stamped as the model's
        processor does (the mean of its first and last frame's times, from the video's first
        frame; the last frame repeated to fill a slot), and the slot's open and close pieces."""
        pieces, per = self.spec.pieces, self.spec.frames_per_slot
        if any(t is None for t in stamps):
            first = (self.video_slots_before + self.segment_slots) * per
            frame_times = [(first + i) / self.fps for i in range(len(stamps))]
        else:
            frame_times = [t - (self.video_t0 or 0.0) for t in stamps]
        texts = []
        for seconds in slot_seconds(frame_times, S, per):
            stamp = pieces.slot_stamp.format(seconds=seconds) if pieces.slot_stamp else ""
            texts.append((self._encode(stamp + pieces.slot_open), self._encode(pieces.slot_close)))
        return texts

    def _slot_times(self, stamps: list[float | None], S: int) -> np.ndarray:
        """(S,) seconds of each slot's first frame from the segment's first frame.

        Real timestamps when every frame has one; otherwise uniform sampling at `fps`
        (slot * frames_per_slot / fps, Qwen2.5-VL's own rule).
        """
        per = self.spec.frames_per_slot
        if any(t is None for t in stamps):
            return slot_times(self.segment_slots, S, per / self.fps)
        firsts = np.asarray(stamps[::per][:S], np.float64)
        if self.segment_t0 is None:
            self.segment_t0 = float(firsts[0])
        if self.video_t0 is None:
            self.video_t0 = self.segment_t0
        return np.maximum(firsts - self.segment_t0, 0.0)

    def _video_seconds(self, times: np.ndarray) -> np.ndarray:
        """(S,) source time of slots at `times` from the open segment's start: from their
        timestamps, or, sampled at `fps`, after the video's slots before this segment."""
        if self.segment_t0 is not None:
            return times + self.segment_t0
        return times + self.video_slots_before * self.spec.frames_per_slot / self.fps


# ----- the one streaming loop: every front end feeds a source through here (door.py) ----------
def stream_source(session, source, video=None, name: str | None = None, content: str | None = None, *,
                  realtime: bool = False, on_chunk=None, between=None, reader_hook=None) -> None:
    """Feed every sampled frame of a VideoSource, with its timestamp, to the session as a video
    segment of its own: `video` (default: the source) is what the segment records, a file's
    name and content hash unless `name` and `content` are given (begin_video). A reader thread
    decodes ahead (video/reader.py); a live source drops what the model cannot keep up with.

    on_chunk(n_frames): after each chunk is fed (progress). between(): after each chunk; False
    stops the stream there. reader_hook(reader): called with the reader before the first chunk
    (chat's bar shows its lag and drops). Ctrl-C propagates; what was fed stays, and an
    unfinished block stays queued (flush() encodes it).
    """
    from ..video.reader import FrameReader

    session.begin_video(source if video is None else video, name, content)
    block = session.frames_per_block
    reader = FrameReader(source, live=source.kind != "file", realtime=realtime, depth=2 * block)
    feed(session, reader.chunks(block), reader=reader, on_chunk=on_chunk, between=between,
         reader_hook=reader_hook)


def feed(session, chunks, *, reader=None, on_chunk=None, between=None, reader_hook=None) -> None:
    """The one streaming loop: add each (frames (n, H, W, 3) uint8, timestamps (n,) or None)
    chunk, then flush the last partial block. reader: the FrameReader the chunks come from
    (stopped at the end, its drops counted); the hooks as in stream_source."""
    if reader is not None and reader_hook is not None:
        reader_hook(reader)
    try:
        for frames, timestamps in chunks:
            session.add_frames(frames, timestamps)
            if reader is not None:
                session.counters.frames_dropped = reader.dropped
            if on_chunk is not None:
                on_chunk(len(frames))
            if between is not None and between() is False:
                break
        session.flush()
    finally:
        if reader is not None:
            reader.stop()
            session.counters.frames_dropped = reader.dropped
