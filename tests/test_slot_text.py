"""Slot text (Qwen3-VL's timestamp and vision start/end tokens inside each temporal group):
candidates of their slot that score as its best visual token (candidates.py, ALGORITHM.md).

Tier 4 (arrays): the rule itself, MLX against the reference, and that a selection never
keeps a group's leading text in a head without one of the group's visual tokens.
"""

import mlx.core as mx
import numpy as np
import pytest
import torch

from infinipot_mlx.contract import candidates
from infinipot_mlx.mlx import scoring, select as mlx_select
from infinipot_mlx.reference import scoring as ref_scoring, select as ref_select
from infinipot_mlx.contract.rows import SLOT_TEXT, check_labels

CONFIGS = ([{"method": m} for m in ("uniform", "sliding_window", "full")]
           + [{"tar_ratio": t} for t in (0.0, 0.5, 1.0)]
           + [{"tar_ratio": t, "van_pooling": True, "layer_idx": i, "num_layers": 8}
              for t in (0.0, 0.5) for i in (0, 2, 4, 6)])


def groups_layout(n_slots: int, grid: tuple[int, int], lead: int = 3, tail: int = 1):
    """(slot_ids, patch_ids) (N,) of slots laid out as Qwen3-VL streams them: `lead` text
    tokens (timestamp, <|vision_start|>), the T visual tokens, `tail` (<|vision_end|>)."""
    T = grid[0] * grid[1]
    patches = np.concatenate([np.full(lead, SLOT_TEXT), np.arange(T), np.full(tail, SLOT_TEXT)])
    slots = np.repeat(np.arange(n_slots), len(patches))
    return slots, np.tile(patches, n_slots)


def random_kv(heads: int, n: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((heads, n, dim)).astype(np.float32),
            rng.standard_normal((heads, n, dim)).astype(np.float32))


def test_labels_accept_slot_text_only_inside_a_slot():
    slots, patches = check_labels([-1, 0, 0, 1], [-1, SLOT_TEXT, 3, SLOT_TEXT])
    assert patches.tolist() == [-1, SLOT_TEXT, 3, SLOT_TEXT]
    for bad in (([-1], [SLOT_TEXT]), ([0], [-1]), ([0], [-3])):
        with pytest.raises(ValueError):
            check_labels(*bad)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_slot_text_scores_as_its_slots_best_visual_token(backend):
    slots, patches = groups_layout(4, (2, 2))
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, len(slots))).astype(np.float32)
    groups = candidates.slot_text_groups(np.stack([slots] * 2), np.stack([patches] * 2))
    if backend == "mlx":
        got = np.array(scoring.with_slot_text(mx.array(scores), groups))
    else:
        got = ref_scoring.with_slot_text(torch.from_numpy(scores), groups).numpy()
    text = patches == SLOT_TEXT
    for h in range(2):
        for s in range(4):
            here = slots == s
            best = scores[h, here & ~text].max()
            np.testing.assert_array_equal(got[h, here & text], best)
        np.testing.assert_array_equal(got[h, ~text], scores[h, ~text])  # visual scores unchanged
    assert candidates.slot_text_groups(np.zeros((1, 3)), np.arange(3)[None]) is None


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_text_of_a_slot_without_visual_tokens_scores_minus_inf(backend):
    slots, patches = np.array([[0, 0, 1, 1]]), np.array([[SLOT_TEXT, 2, SLOT_TEXT, SLOT_TEXT]])
    groups = candidates.slot_text_groups(slots, patches)
    scores = np.array([[5.0, 1.0, 7.0, 9.0]], np.float32)
    if backend == "mlx":
        got = np.array(scoring.with_slot_text(mx.array(scores), groups))
    else:
        got = ref_scoring.with_slot_text(torch.from_numpy(scores), groups).numpy()
    assert got.tolist() == [[1.0, 1.0, -np.inf, -np.inf]]


def select_both(keys, values, **kw):
    got = np.array(mlx_select.select_tokens(keys, values, **kw))
    want = ref_select.select_tokens(torch.from_numpy(keys), torch.from_numpy(values), **kw).numpy()
    np.testing.assert_array_equal(got, want, err_msg=str(kw))
    return want


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_backends_agree_and_leading_text_never_outlives_its_slot(config):
    grid, heads = (3, 4), 2
    slots, patches = groups_layout(6, grid)
    n = len(slots)
    for seed, keep in enumerate((1, 17, n // 3, n - 5, n)):
        keys, values = random_kv(heads, n, 16, seed)
        kept = select_both(keys, values, tokens_per_slot=12, keep=keep, slot_ids=slots,
                           patch_ids=patches, grid_hw=grid, **config)
        assert kept.shape == (heads, n if config.get("method") == "full" else keep)
        if config.get("method") is not None:
            continue  # the baselines keep rows by index, text or not
        for h in range(heads):
            kept_slots = slots[kept[h]]
            lead_kept = kept[h][(patches[kept[h]] == SLOT_TEXT) & (kept[h] % 16 < 3)]
            visual_slots = set(kept_slots[patches[kept[h]] >= 0].tolist())
            assert set(slots[lead_kept].tolist()) <= visual_slots, (h, keep)


def test_recompression_with_partial_groups_agrees_across_backends():
    """A second compression over what a first one kept (partial groups, orphan text)."""
    grid, heads = (2, 3), 3
    slots, patches = groups_layout(8, grid)
    keys, values = random_kv(heads, len(slots), 8, 7)
    for config in CONFIGS[3:]:
        first = select_both(keys, values, tokens_per_slot=6, keep=40, slot_ids=slots,
                            patch_ids=patches, grid_hw=grid, **config)
        k2 = np.take_along_axis(keys, first[..., None], 1)
        v2 = np.take_along_axis(values, first[..., None], 1)
        s2, p2 = slots[first], patches[first]  # (H, 40) per head
        second = select_both(k2, v2, tokens_per_slot=6, keep=17, slot_ids=s2, patch_ids=p2,
                             grid_hw=grid, **config)
        assert second.shape == (heads, 17)


def test_a_head_left_with_slot_text_only_still_selects():
    """keep=1 can leave a head only a trailing <|vision_end|> (it wins its tie with the slot's
    best token); a later selection over text alone still runs, in both backends: such text
    scores -inf, and the latest row wins the tie."""
    slots, patches = groups_layout(3, (2, 2))
    keys, values = random_kv(1, len(slots), 8, 3)
    kept = select_both(keys, values, tokens_per_slot=4, keep=1, slot_ids=slots, patch_ids=patches,
                       tar_ratio=0.0)
    assert patches[kept[0, 0]] == SLOT_TEXT  # the tie went to the later row
    text = np.flatnonzero(patches == SLOT_TEXT)[[3, 7, 11]]  # three slots' <|vision_end|>
    for config in CONFIGS[3:]:
        again = select_both(keys[:, text], values[:, text], tokens_per_slot=4, keep=1, slot_ids=slots[text],
                            patch_ids=patches[text], grid_hw=(2, 2), **config)
        assert again.tolist() == [[2]]
