"""An accuracy floor on the shipped organism (the model `chat --demo` runs), on fixed held-out
videos, through the benchmark's own path (bench/accuracy.py run_one: the real StreamSession,
block by block, every standard question asked in turn, greedy, first word against the truth).

The videos are the test split's first 16 (organism/data.py episode_for("test", i)), so the
run is deterministic: the floors below guard against regressions, not sampling noise.

Measured 2026-12-07 (MLX 0.32.4 on CPU, the shipped weights), mean per-video accuracy with a
95% cluster-bootstrap CI over these 16 videos (4000 resamples; chance is about 0.19):
- full cache:             0.491 [0.411, 0.580]
- infinipot_v at 25%:     0.470 [0.393, 0.546]
- uniform at 25%:         0.257 [0.177, 0.338]
- infinipot_v - uniform: +0.212 [+0.123, +0.304], paired by video
Each floor is the measured value less the CI's half-width (about 0.08), rounded down to a
hundredth: a change that moves accuracy by less than that cannot be told from the sampling
noise of 16 videos (so it must not fail the suite), one that moves it by more is beyond that
noise on any 16 videos; numerical differences between platforms (greedy answers flipping on
near-ties) stay far inside it. The README's 200-video table is the precise figure.
"""

import numpy as np
import pytest

from infinipot_mlx.bench import accuracy
from infinipot_mlx.organism.data import episode_for

VIDEOS = range(16)
FULL_FLOOR = 0.41  # 0.491 - 0.08
INFINIPOT_V_FLOOR = 0.39  # 0.470 - 0.08 (25% of the video's tokens)


@pytest.fixture(scope="module")
def per_video():
    """{config: per-video accuracy (16,)} for the full cache, and infinipot_v and uniform at 25%."""
    bundle = accuracy.load_bundle()
    runs = {"full": ("full", 1.0), "infinipot_v": ("infinipot_v", 0.25), "uniform": ("uniform", 0.25)}
    out = {name: [] for name in runs}
    for i in VIDEOS:
        episode = episode_for("test", i)
        for name, (method, budget) in runs.items():
            correct = accuracy.run_one(bundle, episode.frames, episode.qa, method, budget)["correct"]
            out[name].append(np.mean(correct))
    return {name: np.array(acc) for name, acc in out.items()}


def test_full_cache_accuracy_floor(per_video):
    assert per_video["full"].mean() >= FULL_FLOOR, per_video["full"]


def test_infinipot_v_keeps_accuracy_and_beats_uniform_at_a_quarter(per_video):
    iv, uniform = per_video["infinipot_v"].mean(), per_video["uniform"].mean()
    assert iv >= INFINIPOT_V_FLOOR, per_video["infinipot_v"]
    assert iv >= uniform, (iv, uniform)
