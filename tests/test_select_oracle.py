"""Tier 4 (arrays): both backends' select_tokens against an independent oracle.

The oracle below is written from docs/ALGORITHM.md sections 2-5 (and the slot-text rule of
section 5: a Qwen3-VL slot's text row scores as its slot's best visual token in its head,
-inf once that slot has no visual token left in the head) in plain numpy/Python, one head
and one token at a time, in float64. It calls none of the package's selection code
(contract.candidates, contract.plan, mlx/ and reference/ scoring or select); the pooled VaN
map comes from tests/test_pooling.py's oracle_pool, itself written from the definition.
Only rows.SLOT_TEXT, the label value, is imported.

The data are random float32 keys and values (no ties between scores); the only equal scores
are the ones the rule makes (a slot's text and its best visual token), and ALGORITHM.md
breaks those towards the later arrival, as the oracle does.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from infinipot_mlx.contract.rows import SLOT_TEXT
from infinipot_mlx.mlx import select as mlx_select
from infinipot_mlx.reference import select as ref_select

EPS = 1e-9
NUM_LAYERS = 28
AXES_BY_LAYER = {0: 3, 7: 2, 14: 1, 21: 0}  # a layer of each quarter -> pooled axes (0: none)
NOMINAL = {3: 7, 2: 5, 1: 3}  # pooled axes -> kernel before shrinking


# ----- the oracle ------------------------------------------------------------------------------
def cos(a, b):
    return float(a @ b) / ((np.linalg.norm(a) + EPS) * (np.linalg.norm(b) + EPS))


def recent_slots(slots, patches, T, recent_ratio):
    """Section 4: the last r = max(1, floor(F * ratio)) slots, clamped to the newest run of
    whole slots (the newest slot alone when even it is partial). Slot text is no token here."""
    visual = [s for s, p in zip(slots, patches) if p != SLOT_TEXT]
    if not visual:
        return set()
    r = max(1, math.floor(len(visual) // T * recent_ratio))
    newest_first = sorted(set(visual), reverse=True)
    whole = 0
    for s in newest_first:
        if visual.count(s) != T:
            break
        whole += 1
    return set(newest_first[:min(r, whole) if whole else 1])


def best_first(scores, pool, k):
    """The k indices of `pool` with the highest scores, ties towards the later arrival."""
    return sorted(pool, key=lambda n: (scores[n], n), reverse=True)[:k]


def slot_best(scores, slots, patches):
    """Slot text rows score as their slot's best visual token (-inf when it has none)."""
    out = list(scores)
    for n, (s, p) in enumerate(zip(slots, patches)):
        if p == SLOT_TEXT:
            mates = [scores[m] for m in range(len(slots)) if slots[m] == s and patches[m] != SLOT_TEXT]
            out[n] = max(mates, default=-math.inf)
    return out


def pool_head(van, slots, patches, grid, axes, n_grid):
    """Section 4's pooled VaN of one head, cell by cell: the head's visual tokens fill a
    (G, rows, cols) grid in slot order, G = n_grid (the most slots of any head); a window's
    mean counts cells beyond the edge as zeros and holes not at all. Slot text: nan (no cell)."""
    rows, cols = grid
    extent = (n_grid * rows * cols,) if axes == 1 else (n_grid, rows, cols)
    fit = [min(NOMINAL[axes], e if e % 2 else e - 1) for e in extent]
    kernel = {1: fit, 2: [1, *fit[1:]], 3: fit}[axes]
    rank = {s: i for i, s in enumerate(sorted({s for s, p in zip(slots, patches) if p != SLOT_TEXT}))}
    where = {n: (rank[s] * rows * cols + p,) if axes == 1 else (rank[s], p // cols, p % cols)
             for n, (s, p) in enumerate(zip(slots, patches)) if p != SLOT_TEXT}
    cells = {c: van[n] for n, c in where.items()}
    offsets = list(itertools.product(*(range(-(k // 2), k // 2 + 1) for k in kernel)))
    out = np.full(len(slots), np.nan)
    for n, centre in where.items():
        total = count = 0.0
        for offset in offsets:
            cell = tuple(c + o for c, o in zip(centre, offset))
            if not all(0 <= c < e for c, e in zip(cell, extent)):
                count += 1  # beyond the edge: a zero that counts
            elif cell in cells:
                total, count = total + cells[cell], count + 1
        out[n] = total / count
    return out


def oracle_head(keys, slots, patches, T, K, tar_ratio, recent_ratio, pooled_van):
    """Section 5 for one head: sorted kept indices."""
    n_cand = len(slots)
    k_tar = K - round((1 - tar_ratio) * K)
    recent_set = recent_slots(slots, patches, T, recent_ratio)
    recent = [n for n in range(n_cand) if slots[n] in recent_set]
    kept = []
    if k_tar > 0:
        kept = recent[-k_tar:]  # all of R, or its k_tar latest arrivals
        tar = [0.0] * n_cand
        for n in range(n_cand):
            if patches[n] == SLOT_TEXT or n in recent:
                continue
            mates = [m for m in recent if patches[m] == patches[n]]
            if mates:
                tar[n] = -np.mean([cos(keys[n], keys[m]) for m in mates])
        tar = slot_best(tar, slots, patches)
        others = [n for n in range(n_cand) if n not in recent]
        kept += best_first(tar, others, k_tar - len(kept))
    van = slot_best(list(pooled_van), slots, patches)
    kept += best_first(van, [n for n in range(n_cand) if n not in kept], K - k_tar)
    return sorted(kept)


def oracle(keys, values, slot_ids, patch_ids, T, K, method, tar_ratio=0.5, recent_ratio=0.25,
           layer_idx=None, grid=None):
    """(H, K) kept indices from the definition; layer_idx set = VaN pooling of that layer."""
    n_heads, n_cand, _ = keys.shape
    if method == "uniform":
        return np.array([[i * n_cand // K for i in range(K)]] * n_heads)
    if method == "sliding_window":
        return np.array([list(range(n_cand - K, n_cand))] * n_heads)
    if method == "full":
        return np.array([list(range(n_cand))] * n_heads)
    norms = np.linalg.norm(values.astype(np.float64), axis=-1)  # (H, N) VaN
    slot_ids, patch_ids = (np.broadcast_to(a, (n_heads, n_cand)) for a in (slot_ids, patch_ids))
    axes = AXES_BY_LAYER.get(layer_idx, 0)
    n_grid = max(len(set(s[p != SLOT_TEXT].tolist())) for s, p in zip(slot_ids, patch_ids))
    out = []
    for h in range(n_heads):
        slots, patches = slot_ids[h].tolist(), patch_ids[h].tolist()
        van = pool_head(norms[h], slots, patches, grid, axes, n_grid) if axes else norms[h]
        out.append(oracle_head(keys[h].astype(np.float64), slots, patches, T, K,
                               tar_ratio, recent_ratio, van))
    return np.array(out)


# ----- data ------------------------------------------------------------------------------------
def stream_labels(n_slots, T, pre=0, post=0):
    """(N,) slot and patch ids in arrival order; with text, each slot is `pre` text rows
    (timestamp, <|vision_start|>), its T visual tokens, `post` rows (<|vision_end|>)."""
    slots, patches = [], []
    for s in range(n_slots):
        slots += [s] * (pre + T + post)
        patches += [SLOT_TEXT] * pre + list(range(T)) + [SLOT_TEXT] * post
    return np.array(slots), np.array(patches)


def thinned(slots, patches, T, heads, n_keep, whole_tail, seed):
    """(H, n_keep) labels of a cache after earlier compressions: each head keeps its own
    random subset, the newest `whole_tail` slots whole, and head 0 keeps one old slot's text
    without any of its visual tokens (its text must score -inf)."""
    rng = np.random.default_rng(seed)
    tail = slots >= slots.max() - whole_tail + 1
    out_s, out_p = [], []
    for h in range(heads):
        must = np.flatnonzero(tail)
        banned = np.zeros(len(slots), bool)
        if h == 0:
            orphan = (slots == 1)
            must = np.union1d(must, np.flatnonzero(orphan & (patches == SLOT_TEXT)))
            banned = orphan & (patches != SLOT_TEXT)
        free = np.setdiff1d(np.flatnonzero(~banned), must)
        pick = np.sort(np.concatenate([must, rng.choice(free, n_keep - len(must), replace=False)]))
        out_s.append(slots[pick])
        out_p.append(patches[pick])
    return np.stack(out_s), np.stack(out_p)


def random_kv(heads, n_cand, dim, seed):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((heads, n_cand, dim)).astype(np.float32) for _ in range(2))


def check(keys, values, slot_ids, patch_ids, T, K, grid, config):
    """Both backends equal the oracle for one request."""
    pooled = config.get("layer_idx")
    kw = dict(tokens_per_slot=T, keep=K, slot_ids=slot_ids, patch_ids=patch_ids, grid_hw=grid,
              method=config.get("method", "infinipot_v"), tar_ratio=config.get("tar_ratio", 0.5),
              recent_ratio=config.get("recent_ratio", 0.25))
    if pooled is not None:
        kw.update(van_pooling=True, layer_idx=pooled, num_layers=NUM_LAYERS)
    want = oracle(keys, values, slot_ids, patch_ids, T, K, kw["method"], kw["tar_ratio"],
                  kw["recent_ratio"], pooled, grid)
    got_mlx = np.array(mlx_select.select_tokens(keys, values, **kw))
    got_ref = ref_select.select_tokens(torch.from_numpy(keys), torch.from_numpy(values), **kw).numpy()
    assert isinstance(got_mlx, np.ndarray) and got_mlx.shape == want.shape
    np.testing.assert_array_equal(got_mlx, want, err_msg=f"MLX {config} K={K}")
    np.testing.assert_array_equal(got_ref, want, err_msg=f"reference {config} K={K}")
    return want


CONFIGS = ([dict(method=m) for m in ("uniform", "sliding_window", "full")]
           + [dict(tar_ratio=t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
           + [dict(tar_ratio=0.5, recent_ratio=r) for r in (0.5, 1.0)]
           + [dict(tar_ratio=t, layer_idx=i) for t in (0.0, 0.5) for i in (0, 7, 14, 21)])
SHAPES = [dict(heads=2, slots=5, grid=(2, 2), dim=8), dict(heads=3, slots=8, grid=(2, 3), dim=16)]


def keeps(n_cand, T):
    """K values: one, under one slot, an odd count (round half to even), most, all."""
    return sorted({1, T - 1 or 1, n_cand // 3 + 1, 2 * (n_cand // 5) + 1, n_cand - 1, n_cand})


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=["small", "wide"])
def test_first_compression_matches_the_oracle(shape, config):
    T = shape["grid"][0] * shape["grid"][1]
    slots, patches = stream_labels(shape["slots"], T)
    keys, values = random_kv(shape["heads"], len(slots), shape["dim"], seed=len(slots))
    for K in keeps(len(slots), T):
        check(keys, values, slots, patches, T, K, shape["grid"], config)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=["small", "wide"])
def test_slot_text_matches_the_oracle(shape, config):
    """Qwen3-VL rows: two text rows before each slot's visual tokens, one after."""
    T = shape["grid"][0] * shape["grid"][1]
    slots, patches = stream_labels(shape["slots"], T, pre=2, post=1)
    keys, values = random_kv(shape["heads"], len(slots), shape["dim"], seed=3)
    kept = [check(keys, values, slots, patches, T, K, shape["grid"], config)
            for K in keeps(len(slots), T)]
    if config.get("method", "infinipot_v") == "infinipot_v":  # the rule is exercised: text kept
        assert any(np.isin(k, np.flatnonzero(patches == SLOT_TEXT)).any() for k in kept[1:-1])


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("text", [False, True], ids=["visual", "slot_text"])
@pytest.mark.parametrize("whole_tail", [0, 2], ids=["partial_newest", "whole_block"])
def test_after_earlier_compressions_matches_the_oracle(config, text, whole_tail):
    """Per-head subsets with holes, partial slots and (slot text) a slot whose visual tokens
    are all gone from head 0 while its text is still there."""
    grid, heads, n_slots = (2, 3), 3, 9
    T = grid[0] * grid[1]
    slots, patches = stream_labels(n_slots, T, *((2, 1) if text else (0, 0)))
    slot_ids, patch_ids = thinned(slots, patches, T, heads, len(slots) * 2 // 3, whole_tail, seed=5)
    keys, values = random_kv(heads, slot_ids.shape[1], 8, seed=6)
    for K in keeps(slot_ids.shape[1], T):
        kept = check(keys, values, slot_ids, patch_ids, T, K, grid, config)
        orphan = np.flatnonzero(slot_ids[0] == 1)  # head 0: slot 1's three text rows only
        if text and K <= len(slot_ids[0]) - len(orphan) and config.get("method") is None:
            assert len(orphan) == 3 and not np.isin(orphan, kept[0]).any()  # -inf: they leave first


def test_oracle_knows_the_rules():
    """The oracle itself on hand-made cases (so a wrong oracle cannot agree by accident)."""
    assert recent_slots([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, [0, 1, 2, 3] * 4, 4, 0.5) == {2, 3}
    assert recent_slots([0] * 4 + [1] * 3 + [2] * 4, [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3], 4, 1.0) == {2}
    assert recent_slots([0] * 4 + [1] * 3, [0, 1, 2, 3, 0, 1, 2], 4, 1.0) == {1}  # partial newest
    assert recent_slots([0, 0], [SLOT_TEXT, SLOT_TEXT], 4, 0.25) == set()
    assert best_first([0.5, 0.9, 0.9, 0.1], range(4), 2) == [2, 1]  # ties: the later first
    assert slot_best([0.2, 0.0, 0.7, 0.3, 0.0], [0, 0, 0, 1, 2],
                     [0, SLOT_TEXT, 1, 0, SLOT_TEXT]) == [0.2, 0.7, 0.7, 0.3, -math.inf]
