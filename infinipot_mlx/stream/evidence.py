"""Evidence: the moments of the video an answer rests on, and a map of what the memory keeps.

The moments are the kept slots that receive the most attention mass from the query that
produces the answer's first token (the question's last token), summed over layers and
heads. Each adapter's `forward_attending` computes that attention explicitly from the
cached keys and the token's queries (MLX: the model's own modules, layer by layer; the
reference: transformers' eager attention); a slot's source time comes from the session's
`slot_seconds`, indexed by the frame ids the cache labels its rows with.

Notation: H_kv KV heads, n cached rows, F slots streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Moment:
    """One kept slot of the video and its share of the attention the video received."""

    slot: int  # the frame id its rows carry in the cache
    seconds: float  # source time of the slot's first frame
    video: str  # the name of the video it came from
    share: float  # in [0, 1]: of the attention mass on every kept visual row

    @property
    def clock(self) -> str:
        """mm:ss (h:mm:ss past an hour)."""
        whole = int(self.seconds)
        hours, rest = divmod(whole, 3600)
        return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def slot_mass(masses: list[np.ndarray], slot_ids: list[np.ndarray], n_slots: int) -> np.ndarray:
    """(F,) attention mass per slot, over layers and heads.

    Args:
        masses: per layer (H_kv, n) mass of each cached row (forward_attending).
        slot_ids: per layer (H_kv, n) the rows' frame ids, -1 for pinned text.
    """
    total = np.zeros(n_slots, np.float64)
    for mass, frames in zip(masses, slot_ids):
        visual = frames >= 0
        total += np.bincount(frames[visual], weights=mass[visual], minlength=n_slots)[:n_slots]
    return total


def moments(masses, slot_ids, slot_seconds: list[float], slot_video: list[int], videos: list[dict],
            top: int = 3) -> list[Moment]:
    """The `top` slots with the most attention mass, most first (empty with no video kept)."""
    per_slot = slot_mass(masses, slot_ids, len(slot_seconds))
    whole = per_slot.sum()
    if whole <= 0:
        return []
    order = [int(s) for s in np.argsort(-per_slot, kind="stable")[:top] if per_slot[s] > 0]
    return [Moment(s, slot_seconds[s], videos[slot_video[s]]["name"] if videos else "video",
                   float(per_slot[s] / whole)) for s in order]


def format_moments(found: list[Moment]) -> str:
    """'evidence: 00:12 (34%), 00:40 (21%)'; with several videos, each names its video."""
    if not found:
        return "evidence: no video in the memory"
    several = len({m.video for m in found}) > 1
    return "evidence: " + ", ".join(f"{m.video + ' ' if several else ''}{m.clock} ({m.share:.0%})" for m in found)


def retained(session) -> tuple[np.ndarray, np.ndarray]:
    """(seconds (B,), kept (layers, B)): kept visual tokens per source second and layer,
    averaged over KV heads (each head keeps its own set), over the whole stream so far."""
    seconds = np.asarray(session.slot_seconds, np.float64)
    bins = np.arange(int(np.floor(seconds.max())) + 1 if len(seconds) else 1)
    kept = np.zeros((len(session.cache.layers), len(bins)))
    for i, layer in enumerate(session.cache.layers):
        frames = layer.slot_ids  # (H_kv, n)
        visual = frames[frames >= 0]
        if len(visual):
            kept[i] = np.bincount(np.floor(seconds[visual]).astype(int), minlength=len(bins))[: len(bins)]
            kept[i] /= frames.shape[0]
    return bins.astype(np.float64), kept


def memory_map(session, path: str | Path) -> Path:
    """Draw what the memory keeps: visual tokens per source second (x) and layer (y), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds, kept = retained(session)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(kept) + 1.6))
    image = ax.imshow(kept, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      extent=(seconds[0], seconds[-1] + 1, -0.5, len(kept) - 0.5))
    ax.set(xlabel="source time (s)", ylabel="layer",
           title=f"kept visual tokens per second and layer ({session.cache.n_visual} per head of "
                 f"{session.counters.slots_seen} slots streamed, capacity {session.config.capacity})")
    ax.set_yticks(range(len(kept)))
    fig.colorbar(image, ax=ax, label="tokens per head")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
