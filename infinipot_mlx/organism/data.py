"""Synthetic streaming-video QA for the model organism, deterministic by seed.

A video is F frames of S x S RGB uint8 (default 32 x 84 x 84). The frame is a 3 x 3 grid of
28 px cells: one cell is one merged Qwen2.5-VL token (patch 14, merge 2), so a temporal slot
(2 frames) is T = 9 tokens and 32 frames are 16 slots = 144 video tokens.

- Background: per-cell stripes whose orientation and frequency are fixed by the cell (pixels
  encode place), a random tint and phase per video, soft blotches, a slow brightness drift
  and noise. Mostly static: the temporal redundancy TaR relies on.
- Events: 1-4 shapes (square, disc, triangle) of distinct colours among 6, each inside one
  cell for 3-5 frames (so at least one whole temporal slot shows it), never overlapping in
  time. Grey distractor flashes (2 frames) come and go too.
- Questions have one-word answers (QTYPES): count, first, last, before, after, where, present.

Variants (split names) that stress TaR: "pan" (background translates: camera pan), "texture"
(stripes move every frame), "flicker" (global per-frame gain), "repeat" (the last event
repeats the first one's colour, shape and cell, late in the video). "main" is the training
distribution. Seeds: train indices map to seeds [0, 10**6); "val" to 2 * 10**6 + i; "test"
and every stress split to 10**6 + i, so train and held-out never share a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 185, 45),
    "blue": (35, 70, 230),
    "yellow": (240, 225, 35),
    "purple": (150, 45, 205),
    "orange": (250, 140, 20),
}
CELLS = ("northwest", "north", "northeast", "west", "center", "east",
         "southwest", "south", "southeast")  # raster order of the 3 x 3 grid
NUMBERS = ("zero", "one", "two", "three", "four", "five")
SHAPES = ("square", "disc", "triangle")
QUESTIONS: dict[str, str] = {
    "count": "How many coloured shapes appeared?",
    "first": "What colour was the first shape?",
    "last": "What colour was the last shape?",
    "before": "What colour was the shape right before the {colour} one?",
    "after": "What colour was the shape right after the {colour} one?",
    "where": "Where did the {colour} shape appear?",
    "present": "Was there a {colour} shape?",
}
QTYPES = tuple(QUESTIONS)
ANSWER_WORDS = (*COLOURS, *CELLS, *NUMBERS[1:], "yes", "no")
VARIANTS = ("main", "pan", "texture", "flicker", "repeat")
SPLIT_BASE = {"train": 0, "test": 10**6, "val": 2 * 10**6}
CELL_PX = 28
GRID = 3


@dataclass(frozen=True)
class VideoOptions:
    """What a video looks like; the curriculum shortens videos and caps events."""

    n_frames: int = 32
    min_events: int = 1
    max_events: int = 4
    max_distractors: int = 2
    variant: str = "main"


@dataclass
class Event:
    """One coloured (or grey distractor) shape: frames [start, start + length)."""

    start: int
    length: int
    cell: int
    colour: str  # a COLOURS key, or "grey" for a distractor
    shape: str
    size: int
    offset: tuple[int, int]  # (dy, dx) of the shape's box inside its cell
    grey: int = 0


@dataclass
class Episode:
    """A rendered video with its events and questions."""

    frames: np.ndarray  # (F, 84, 84, 3) uint8
    fps: float
    events: list[Event]  # coloured events in time order
    distractors: list[Event]
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (question, answer, qtype)


def split_seed(split: str, index: int) -> int:
    """Seed of the index-th video of a split (stress splits share the test seeds)."""
    if index < 0 or index >= 10**6:
        raise ValueError(f"video index must be in [0, 10**6), got {index}")
    base = SPLIT_BASE["test"] if split in VARIANTS[1:] else SPLIT_BASE.get(split)
    if base is None:
        raise ValueError(f"unknown split {split!r}; use train, val, test or {VARIANTS[1:]}")
    return base + index


def _place_in_time(rng: np.random.Generator, n_frames: int, lengths: list[int]) -> list[int]:
    """Start frames for non-overlapping events (gap >= 1 frame), in time order."""
    slack = n_frames - sum(lengths) - (len(lengths) - 1)
    if slack < 0:
        raise ValueError(f"{len(lengths)} events do not fit in {n_frames} frames")
    cuts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))  # free frames before each
    return [int(cuts[k]) + sum(lengths[:k]) + k for k in range(len(lengths))]


def _new_shape(rng: np.random.Generator, colour: str, start: int, length: int) -> Event:
    size = int(rng.integers(14, 21))  # leaves some of the cell's stripes visible
    offset = tuple(int(v) for v in rng.integers(0, CELL_PX - size + 1, size=2))
    return Event(start, length, int(rng.integers(0, GRID * GRID)), colour,
                 SHAPES[int(rng.integers(0, len(SHAPES)))], size, offset)


def sample_events(rng: np.random.Generator, opts: VideoOptions) -> tuple[list[Event], list[Event]]:
    """Coloured events (distinct colours, time-ordered) and grey distractor flashes."""
    cap = min(opts.max_events, max(1, (opts.n_frames + 1) // 6))
    n = int(rng.integers(opts.min_events, max(opts.min_events, cap) + 1))
    repeat = opts.variant == "repeat" and n >= 2
    colours = [str(c) for c in rng.permutation(list(COLOURS))[: n - repeat]]
    lengths = [int(v) for v in rng.integers(3, 6, size=n)]
    starts = _place_in_time(rng, opts.n_frames, lengths)
    events = [_new_shape(rng, c, s, l) for c, s, l in zip(colours, starts, lengths)]
    if repeat:  # the same content as the first event, in the same cell, at the end
        events.append(replace(events[0], start=starts[-1], length=lengths[-1]))
    distractors = []
    for _ in range(int(rng.integers(0, opts.max_distractors + 1))):
        d = _new_shape(rng, "grey", int(rng.integers(0, opts.n_frames - 1)), 2)
        d.grey = int(rng.integers(90, 190))
        distractors.append(d)
    return events, distractors


def _stripes(rng: np.random.Generator, n_frames: int, size: int, speed: float) -> np.ndarray:
    """Per-cell stripes in [0, 1]; orientation and period fixed by the cell. (F', S, S)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cell = (yy // CELL_PX).clip(0, GRID - 1) * GRID + (xx // CELL_PX).clip(0, GRID - 1)
    angle = cell * (np.pi / GRID**2)  # 9 orientations, 20 degrees apart
    period = 5.0 + (cell * 4) % 9  # 5..13 px
    phase0 = rng.uniform(0, 2 * np.pi, size=GRID * GRID)[cell.astype(int)]
    proj = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period) + phase0
    t = np.arange(n_frames if speed else 1, dtype=np.float32)[:, None, None]
    return 0.5 + 0.5 * np.sin(proj[None] + speed * t)


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    """A few soft dark/bright blobs, (S, S) in about [-1, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0, size, size=2)
        r = rng.uniform(8, 20)
        out += rng.choice([-1.0, 1.0]) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return out


def render_background(rng: np.random.Generator, opts: VideoOptions, size: int = 84) -> np.ndarray:
    """Background frames as float32 (F, S, S, 3) in [0, 255] before events and noise."""
    speed = rng.uniform(0.3, 0.8) * rng.choice([-1, 1]) if opts.variant == "texture" else 0.0
    stripes = _stripes(rng, opts.n_frames, size, speed)[..., None]  # (F' , S, S, 1)
    dark, light = rng.uniform(40, 110, size=3), rng.uniform(120, 200, size=3)
    contrast = 0.8 if speed else 0.3  # moving textures at full contrast: every token changes
    base = dark + (light - dark) * (0.5 - contrast / 2 + contrast * stripes)  # muted by default
    base = base + 25.0 * _blotches(rng, size)[None, ..., None]
    frames = np.broadcast_to(base.astype(np.float32), (opts.n_frames, size, size, 3)).copy()
    if opts.variant == "pan":  # camera pan: the scene slides, wrapping at the border
        vy, vx = rng.uniform(0.5, 1.5, size=2) * rng.choice([-1, 1], size=2)
        for f in range(opts.n_frames):
            frames[f] = np.roll(frames[f], (round(vy * f), round(vx * f)), axis=(0, 1))
    t = np.arange(opts.n_frames, dtype=np.float32)
    drift = 1.0 + 0.08 * np.sin(2 * np.pi * t / max(opts.n_frames, 1) + rng.uniform(0, 6.3))
    return frames * drift[:, None, None, None]


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a filled square, disc or triangle."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "disc":
        return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 2) ** 2
    return np.abs(xx - size / 2) <= yy / 2  # triangle, apex up


def draw_event(frames: np.ndarray, ev: Event) -> None:
    """Paint one event into frames (F, S, S, 3) in place."""
    row, col = divmod(ev.cell, GRID)
    y0, x0 = row * CELL_PX + ev.offset[0], col * CELL_PX + ev.offset[1]
    rgb = np.array(COLOURS.get(ev.colour, (ev.grey,) * 3), np.float32)
    mask = _shape_mask(ev.shape, ev.size)
    window = frames[ev.start : ev.start + ev.length, y0 : y0 + ev.size, x0 : x0 + ev.size]
    window[:, mask] = rgb  # (length, n_mask, 3)


def render(rng: np.random.Generator, opts: VideoOptions, events: list[Event],
           distractors: list[Event], size: int = 84) -> np.ndarray:
    """Frames (F, S, S, 3) uint8: background, distractors, events, flicker, noise."""
    frames = render_background(rng, opts, size)
    for ev in [*distractors, *events]:
        draw_event(frames, ev)
    if opts.variant == "flicker":
        frames *= rng.uniform(0.65, 1.35, size=opts.n_frames)[:, None, None, None]
    frames += 4.0 * rng.standard_normal(size=frames.shape, dtype=np.float32)
    return frames.clip(0, 255).astype(np.uint8)


def _unique(events: list[Event]) -> list[int]:
    """Indices of events whose colour occurs once in the video."""
    colours = [e.colour for e in events]
    return [k for k, c in enumerate(colours) if colours.count(c) == 1]


def make_questions(rng: np.random.Generator, events: list[Event]) -> list[tuple[str, str, str]]:
    """Every answerable question type once: (question, answer, qtype)."""
    qa = [(QUESTIONS["count"], NUMBERS[len(events)], "count"),
          (QUESTIONS["first"], events[0].colour, "first"),
          (QUESTIONS["last"], events[-1].colour, "last")]
    unique = _unique(events)
    for qtype, ok, other in (("before", lambda k: k >= 1, -1),
                             ("after", lambda k: k + 1 < len(events), 1)):
        pool = [k for k in unique if ok(k)]
        if pool:
            k = pool[int(rng.integers(0, len(pool)))]
            q = QUESTIONS[qtype].format(colour=events[k].colour)
            qa.append((q, events[k + other].colour, qtype))
    e = events[int(rng.integers(0, len(events)))]
    qa.append((QUESTIONS["where"].format(colour=e.colour), CELLS[e.cell], "where"))
    seen = {e.colour for e in events}
    pool = sorted(seen) if rng.random() < 0.5 else sorted(set(COLOURS) - seen)
    c = pool[int(rng.integers(0, len(pool)))]
    qa.append((QUESTIONS["present"].format(colour=c), "yes" if c in seen else "no", "present"))
    return qa


def generate(seed: int, opts: VideoOptions = VideoOptions(), fps: float = 2.0) -> Episode:
    """The episode of one seed: same seed and options, same frames and questions."""
    if opts.variant not in VARIANTS:
        raise ValueError(f"unknown variant {opts.variant!r}; choose from {VARIANTS}")
    rng = np.random.default_rng(seed)
    events, distractors = sample_events(rng, opts)
    frames = render(rng, opts, events, distractors)
    return Episode(frames, fps, events, distractors, make_questions(rng, events))


def episode_for(split: str, index: int, n_frames: int = 32, **kw) -> Episode:
    """The index-th episode of a split; stress splits set the variant from their name."""
    variant = split if split in VARIANTS[1:] else kw.pop("variant", "main")
    if variant == "repeat":
        kw.setdefault("min_events", 2)  # a repeat needs an event to repeat
    opts = VideoOptions(n_frames=n_frames, variant=variant, **kw)
    return generate(split_seed(split, index), opts)


def token_events(events: list[Event], n_frames: int, frames_per_slot: int = 2) -> list[list[str]]:
    """Colour shown at each (slot, cell) token: an event's colour if it covers a frame there.

    Returns S lists of 9 strings ("" where no coloured shape is shown); a training signal
    for the organism's auxiliary per-token loss.
    """
    grid = [["" for _ in range(GRID * GRID)] for _ in range(n_frames // frames_per_slot)]
    for ev in events:
        for f in range(ev.start, ev.start + ev.length):
            grid[f // frames_per_slot][ev.cell] = ev.colour
    return grid


def training_questions(ep: Episode, seed: int) -> list[tuple[str, str, str]]:
    """A richer, shuffled question set for training: the test set's questions, "where" for
    up to two events and "present" for one seen and one unseen colour, in random order
    (so no type always comes first or last, and binding questions get more signal)."""
    rng = np.random.default_rng([seed, 1])
    qa = [x for x in ep.qa if x[2] not in ("where", "present")]
    unique = [ep.events[k] for k in _unique(ep.events)]
    for k in rng.permutation(len(unique))[:2]:
        e = unique[int(k)]
        qa.append((QUESTIONS["where"].format(colour=e.colour), CELLS[e.cell], "where"))
    seen = sorted({e.colour for e in ep.events})
    unseen = sorted(set(COLOURS) - set(seen))
    for pool, answer in ((seen, "yes"), (unseen, "no")):
        c = pool[int(rng.integers(0, len(pool)))]
        qa.append((QUESTIONS["present"].format(colour=c), answer, "present"))
    return [qa[int(k)] for k in rng.permutation(len(qa))]
