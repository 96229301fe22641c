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


@dataclass(frozen=True)
class Retention:
    """What the memory keeps of one video, per whole second of its source time."""

    name: str
    seconds: np.ndarray  # (B,) the video's whole seconds, first to last slot
    kept: np.ndarray  # (layers, B) visual tokens kept per head (averaged over KV heads)
    streamed: np.ndarray  # (B,) visual tokens per head that arrived in each second

    @property
    def share(self) -> np.ndarray:
        """(layers, B) in [0, 1]: the share of each second's visual tokens kept (0 for a
        second that brought no slot)."""
        return self.kept / np.maximum(self.streamed, 1)


def retention(session) -> list[Retention]:
    """Per video with slots streamed, in order: its kept and streamed visual tokens per second
    and layer, over the whole stream so far (slot text rows, Qwen3-VL's, are not counted)."""
    seconds = np.asarray(session.slot_seconds, np.float64)
    video = np.asarray(session.slot_video, np.int64)
    T = session.spec.tokens_per_slot(session.frame_hw) if session.frame_hw is not None else 0
    layers, found = session.cache.layers, []
    for v, described in enumerate(session.videos):
        whole = np.floor(seconds[video == v]).astype(np.int64)
        if not len(whole):
            continue
        first, n_bins = int(whole.min()), int(whole.max() - whole.min()) + 1
        kept = np.zeros((len(layers), n_bins))
        for i, layer in enumerate(layers):
            frames, patches = layer.slot_ids, layer.patch_ids  # (H_kv, n)
            rows = frames[(frames >= 0) & (patches >= 0)]
            rows = rows[video[rows] == v]
            kept[i] = np.bincount(np.floor(seconds[rows]).astype(np.int64) - first, minlength=n_bins)
            kept[i] /= frames.shape[0]
        found.append(Retention(described["name"], np.arange(first, first + n_bins, dtype=np.float64), kept,
                               np.bincount(whole - first, minlength=n_bins) * T))
    return found


def map_figure(session):
    """The memory map as a matplotlib Figure: one panel per video, on its own time axis and
    titled with its name; per second (x) and layer (y), the share of the visual tokens that
    arrived in that second which the memory keeps, on one scale 0..1 for every panel.

    The share, not the count: a count grows with the slots a second happened to bring, so the
    newest block, kept whole, outshone every older second on a linear scale of counts; the
    share reads 1 for what is kept whole and the fraction compression left elsewhere, on the
    same scale for every second, video and frame rate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos, n_layers = retention(session), len(session.cache.layers)
    fig, axes = plt.subplots(max(len(videos), 1), 1, squeeze=False, dpi=110, layout="constrained",
                             figsize=(10, max(len(videos), 1) * (0.3 * n_layers + 1.3) + 0.5))
    fig.suptitle(f"share of each second's visual tokens kept, per layer ({session.cache.n_visual} kept per "
                 f"head of {session.counters.slots_seen} slots streamed, capacity {session.config.capacity})")
    image = None
    for ax, video in zip(axes[:, 0], videos):
        image = ax.imshow(video.share, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest", extent=(video.seconds[0], video.seconds[-1] + 1,
                                                           -0.5, n_layers - 0.5))
        ax.set(title=video.name, xlabel="source time (s)", ylabel="layer")
        ax.set_yticks(range(0, n_layers, max(1, n_layers // 8)))
    if image is None:
        axes[0, 0].set(title="no video in the memory", xticks=[], yticks=[])
    else:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="share kept")
    return fig


def memory_map(session, path: str | Path) -> Path:
    """Draw what the memory keeps (map_figure) to a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = map_figure(session)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
