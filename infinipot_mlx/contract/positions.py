"""RoPE positions for streamed tokens (ALGORITHM.md section 6), in pure numpy.

Both backends call these functions and pass the result to the model explicitly, so neither
relies on mlx-vlm's or transformers' own position code (they differ; see the tests).

Positions are computed block by block from the running logical position `next_position`
(one past the largest position so far), never from a whole-sequence table.

Notation: S = temporal slots in a block, R x C = merged grid rows x cols, T = R * C.
M-RoPE positions are (3, L) int64 arrays (t, h, w axes); 1-D RoPE positions are (L,).
"""

from __future__ import annotations

import numpy as np


def text_positions(next_position: int, n: int, axes: int = 3) -> np.ndarray:
    """Positions of n text tokens starting at next_position.

    Returns:
        (axes, n) int64 for M-RoPE (all axes equal), or (n,) when axes == 1.
    """
    pos = np.arange(next_position, next_position + n, dtype=np.int64)
    return pos if axes == 1 else np.broadcast_to(pos, (axes, n)).copy()


def slot_times(first_slot: int, n_slots: int, second_per_grid: float) -> np.ndarray:
    """(S,) seconds of uniformly sampled slots from the segment start: slot * second_per_grid."""
    return np.arange(first_slot, first_slot + n_slots, dtype=np.float64) * second_per_grid


def mrope_positions_at(video_start: int, times: np.ndarray, grid_hw: tuple[int, int],
                       tokens_per_second: float) -> np.ndarray:
    """M-RoPE positions of S temporal slots shown at `times` seconds from the segment start.

    t = video_start + floor(time * tokens_per_second) (Qwen2.5-VL's absolute time, the
    product in floating point before the floor), h = video_start + row,
    w = video_start + col. With uniform sampling, time = slot * second_per_grid and this is
    Qwen2.5-VL's original rule; with real timestamps (variable frame rate, a slow camera,
    dropped frames) each slot gets the time its first frame was shown.

    Args:
        video_start: position the first video token's axes are offset by (the
            next_position when the video segment opened).
        times: (S,) float seconds of each slot's first frame from the segment's start.
        grid_hw: (R, C) merged grid of one slot.
        tokens_per_second: the vision config's tokens_per_second.
    Returns:
        (3, S * R * C) int64, slot-major then row-major (the vision tower's order).
    """
    rows, cols = grid_hw
    n_slots = len(times)
    t = np.floor(np.asarray(times, np.float64) * tokens_per_second).astype(np.int64)  # (S,)
    t = np.repeat(t, rows * cols)  # (S*R*C,)
    h = np.tile(np.repeat(np.arange(rows, dtype=np.int64), cols), n_slots)
    w = np.tile(np.arange(cols, dtype=np.int64), rows * n_slots)
    return np.stack([t, h, w]) + video_start  # (3, S*R*C)


def mrope_video_positions(
    video_start: int,
    first_slot: int,
    n_slots: int,
    grid_hw: tuple[int, int],
    second_per_grid: float,
    tokens_per_second: float,
) -> np.ndarray:
    """M-RoPE positions of S uniformly sampled slots, as Qwen2.5-VL's original code.

    t = video_start + floor(slot * second_per_grid * tokens_per_second), slot counting from
    the start of the video segment (see mrope_positions_at).

    Args:
        first_slot: index of this block's first slot within the video segment.
        n_slots: S, slots in this block.
        second_per_grid: temporal_patch_size / sampling fps.
    Returns:
        (3, S * R * C) int64.
    """
    times = slot_times(first_slot, n_slots, second_per_grid)
    return mrope_positions_at(video_start, times, grid_hw, tokens_per_second)


def video_positions(spec, video_start: int, first_slot: int, times: np.ndarray,
                    grid_hw: tuple[int, int]) -> np.ndarray:
    """Positions of S slots of a video segment, for the model a ModelSpec describes.

    M-RoPE (spec.position_axes == 3): mrope_positions_at, (3, S*T), time from `times`;
    Qwen2-VL (spec.slot_time False): mrope_slot_positions, t = the slot's index, times unused.
    1-D RoPE: one position per token after the segment's earlier slots, (S*T,); a slot's
    time plays no part, only the count of slots (first_slot of them before this block).

    Args:
        video_start: the position at which the video segment opened.
        first_slot: slots of the segment before this block.
        times: (S,) seconds of each slot's first frame from the segment's first frame.
        grid_hw: (R, C) merged grid of one slot; T = R * C.
    """
    if spec.position_axes == 3 and not spec.slot_time:
        return mrope_slot_positions(video_start, first_slot, len(times), grid_hw)
    if spec.position_axes == 3:
        return mrope_positions_at(video_start, times, grid_hw, spec.tokens_per_second)
    per_slot = grid_hw[0] * grid_hw[1]
    return text_positions(video_start + first_slot * per_slot, len(times) * per_slot, axes=1)


def mrope_slot_positions(video_start: int, first_slot: int, n_slots: int,
                         grid_hw: tuple[int, int]) -> np.ndarray:
    """Qwen2-VL's M-RoPE positions of S slots: t = video_start + slot (the slot's index in the
    video segment, whatever its time), h = video_start + row, w = video_start + col, as
    Qwen2-VL's get_rope_index gives the whole prompt. Returns (3, S * R * C) int64."""
    rows, cols = grid_hw
    t = np.repeat(np.arange(first_slot, first_slot + n_slots, dtype=np.int64), rows * cols)
    h = np.tile(np.repeat(np.arange(rows, dtype=np.int64), cols), n_slots)
    w = np.tile(np.arange(cols, dtype=np.int64), rows * n_slots)
    return np.stack([t, h, w]) + video_start  # (3, S*R*C)


def mrope_stock_mlx_vlm(video_start: int, n_slots: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """What stock mlx-vlm's get_rope_index gives a video (t = slot, no time scaling).

    Kept only so tests can show where it differs from the original implementation.
    """
    return mrope_video_positions(video_start, 0, n_slots, grid_hw, 1.0, 1.0)


def next_after(positions: np.ndarray) -> int:
    """The next text position after a span: max over every axis and token, plus one."""
    return int(positions.max()) + 1


# ----- Qwen3-VL: text timestamps, one vision block per temporal group -------------------------
def slot_seconds(frame_times: list[float], n_slots: int, frames_per_slot: int = 2) -> list[float]:
    """Each slot's time as Qwen3-VL's processor stamps it: the mean of its first and last
    frame's times, the last frame repeated to fill the last slot (as the processor pads an odd
    count), in the processor's arithmetic ((a + b) / 2 of the frame times)."""
    times = list(frame_times) + list(frame_times[-1:]) * (n_slots * frames_per_slot - len(frame_times))
    return [(times[s * frames_per_slot] + times[s * frames_per_slot + frames_per_slot - 1]) / 2
            for s in range(n_slots)]


def qwen3_timestamp_text(slot_index: int, fps: float, frames_per_slot: int = 2,
                         n_frames: int | None = None) -> str:
    """The timestamp text Qwen3-VL's processor writes before temporal group (slot) `slot_index`
    of frames sampled at `fps` from frame 0 (frame i shown at i / fps seconds): slot_seconds,
    formatted as specs.QWEN3_VL_PIECES.slot_stamp ("<{t:.1f} seconds>"). With n_frames,
    indices past the last frame repeat it.

    Example: slot 1 at fps 2 -> frames 2, 3 -> (1.0 + 1.5) / 2 = 1.25 -> "<1.2 seconds>".
    """
    from .specs import QWEN3_VL_PIECES

    n = (slot_index + 1) * frames_per_slot  # the frames up to this slot's end
    n = n if n_frames is None else min(n, n_frames)
    seconds = slot_seconds([i / fps for i in range(n)], slot_index + 1, frames_per_slot)[slot_index]
    return QWEN3_VL_PIECES.slot_stamp.format(seconds=seconds)


def qwen3_group_positions(start: int, text_len: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """M-RoPE positions of one Qwen3-VL group: text_len text tokens, then one slot's R x C
    visual tokens, as transformers' Qwen3VLModel.get_rope_index (and mlx-vlm's) give them.

    A group covers the text tokens since the previous group's last visual token (or the prompt
    start) up to this slot's first visual token: in transformers 5's layout the previous
    <|vision_end|>, the "<t seconds>" text and this slot's <|vision_start|> (the first group
    also takes the chat prefix). The text gets start, start + 1, ...; the visual tokens at
    v = start + text_len get t = v, h = v + row, w = v + col (no time in t: Qwen3-VL encodes
    time as text). The next group or text starts at next_after(...) = v + max(R, C).
    Concatenating the groups and text_positions(next, n) for the text after the last slot
    gives get_rope_index's positions of the whole prompt.

    Returns:
        (3, text_len + R * C) int64.
    """
    rows, cols = grid_hw
    vis = start + text_len
    h = np.repeat(np.arange(rows, dtype=np.int64), cols)
    w = np.tile(np.arange(cols, dtype=np.int64), rows)
    visual = np.stack([np.zeros_like(h), h, w]) + vis
    return np.concatenate([text_positions(start, text_len), visual], axis=1)


def slot_text_positions(start: int, leads: list[int], trails: list[int],
                        grid_hw: tuple[int, int]) -> np.ndarray:
    """Positions of a block of Qwen3-VL slots streamed from `start`: per slot, its leading
    text (leads[s] tokens: the timestamp and <|vision_start|>) and visual tokens as one
    qwen3_group_positions group, then its trailing text (trails[s]: <|vision_end|>) at the
    next text positions. The next block starts at next_after(result), as a one-shot prompt
    continues. Returns (3, sum(leads) + S * R * C + sum(trails)) int64.
    """
    parts = []
    for lead, trail in zip(leads, trails):
        group = qwen3_group_positions(start, lead, grid_hw)
        start = next_after(group)
        parts += [group, text_positions(start, trail)]
        start += trail
    return np.concatenate(parts, axis=1)
