"""The model organism: a tiny Qwen2.5-VL trained here on synthetic streaming video.

Answering its questions needs specific moments of the stream (which shapes appeared, in
what order, where), so it measures what a KV-cache compressor keeps. This module is
numpy-only; training lives in organism.train (MLX), the shipped checkpoint in weights_dir().

    from infinipot_mlx.organism import make_episode, weights_dir
    frames, fps, qa = make_episode(7)              # held-out test video 7
    for question, answer, qtype in qa: ...

The checkpoint was trained with the StreamSession prompt (ChatPieces) and absolute-time
M-RoPE at fps 2.0: stream the frames at that fps and ask the questions verbatim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import ANSWER_WORDS, CELLS, COLOURS, NUMBERS, QTYPES, QUESTIONS, SPLIT_BASE, VARIANTS, Episode, VideoOptions, episode_for, generate, split_seed

__all__ = [
    "weights_dir", "make_episode", "QUESTIONS", "QTYPES", "ANSWER_WORDS", "COLOURS", "CELLS",
    "NUMBERS", "VARIANTS", "SPLITS", "SPLIT_BASE", "Episode", "VideoOptions", "episode_for",
    "generate", "split_seed",
]

SPLITS = ("train", "val", "test", *VARIANTS[1:])  # stress splits: pan, texture, flicker, repeat


def weights_dir() -> Path:
    """Folder of the shipped checkpoint (hub layout; open it with mlx_vlm.load or load())."""
    return Path(__file__).resolve().parent / "weights"


def make_episode(seed: int, split: str = "test", n_frames: int = 32,
                 **options) -> tuple[np.ndarray, float, list[tuple[str, str, str]]]:
    """Video `seed` of a split (seed = index within the split, 0 <= seed < 10**6).

    Args:
        seed: index of the video in the split; the same index always gives the same video.
        split: "test" (held out), "val", "train", or a stress split ("pan", "texture",
            "flicker", "repeat"), which reuse the test seeds with that variant.
        n_frames: even number of frames (the organism was trained on 32).
        **options: other VideoOptions fields (min_events, max_events, max_distractors).
    Returns:
        frames (F, 84, 84, 3) uint8, fps (2.0), and [(question, answer, qtype), ...] with
        one question of every type the video can answer (QTYPES order).
    """
    ep = episode_for(split, seed, n_frames=n_frames, **options)
    return ep.frames, ep.fps, ep.qa
