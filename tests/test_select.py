"""Tier 2: the MLX selection core on hand-computed cases, plus hypothesis properties.

Hand cases use H = 2 heads, 4 slots x 4 patches (a 2 x 2 grid), D = 4, token n = 4f + p.
Keys are built from unit vectors e_0..e_3 so that every cosine is obvious; values are
c * e_0 so that VaN is c. Expected kept sets are written out from the rules of
ALGORITHM.md section 5, not computed by the code.
"""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from infinipot_mlx.contract import candidates
from infinipot_mlx.mlx.scoring import pool_value_norm, temporal_redundancy, value_norm
from infinipot_mlx.mlx.select import mask_indices, select_tokens, top_k_mask
from test_pooling import oracle_pool

E = np.eye(4, dtype=np.float32)
T = 4
# head-wise "novelty" a of frames 0-1: key(f, p) = e_p + a * e_{p+1}, so cos with e_p is
# 1 / sqrt(1 + a^2): a larger a is a higher TaR. Frames 2-3 have key e_p exactly.
A = [[0.1, 2.0, 0.5, 3.0, 1.0, 0.2, 4.0, 0.3],   # head 0 TaR order: 6, 3, 1, 4, 2, 7, 5, 0
     [5.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 6.0]]   # head 1 TaR order: 7, 0, 6, 5, 4, 3, 2, 1
C = [[9, 1, 8, 2, 7, 3, 6, 4, 16, 10, 11, 5, 12, 13, 14, 15],   # head 0 VaN
     [16, 15, 14, 13, 12, 11, 10, 9, 1, 2, 3, 4, 5, 6, 7, 8]]   # head 1 VaN


def hand_kv():
    keys = np.zeros((2, 16, 4), np.float32)
    for h in range(2):
        for n in range(16):
            p = n % T
            keys[h, n] = E[p] + (A[h][n] * E[(p + 1) % 4] if n < 8 else 0)
    values = np.asarray(C, np.float32)[:, :, None] * E[0]  # (2, 16, 4)
    return keys, values


def kept(method="infinipot_v", **kw):
    keys, values = hand_kv()
    out = select_tokens(keys, values, tokens_per_slot=T, method=method, **kw)
    assert out.dtype == mx.int32
    return np.array(out).tolist()


def test_default_recent_frame_fills_tar_share_then_van():
    # K_tar = 8 - round(4) = 4 = the recent frame 3 (r = 1); VaN 4 among tokens 0..11
    assert kept(keep=8) == [[0, 8, 9, 10, 12, 13, 14, 15], [0, 1, 2, 3, 12, 13, 14, 15]]


def test_tar_fill_after_recent_frame():
    # K_tar = 8 - round(2) = 6: recent 12..15 + top-2 TaR; then top-2 VaN of the rest
    assert kept(keep=8, tar_ratio=0.75) == [[3, 6, 8, 10, 12, 13, 14, 15],
                                            [0, 1, 2, 7, 12, 13, 14, 15]]


def test_tar_only_ablation():
    assert kept(keep=8, tar_ratio=1.0) == [[1, 3, 4, 6, 12, 13, 14, 15],
                                           [0, 5, 6, 7, 12, 13, 14, 15]]


def test_van_only_ablation_ignores_recency():
    assert kept(keep=5, tar_ratio=0.0) == [[8, 12, 13, 14, 15], [0, 1, 2, 3, 4]]


def test_recent_beyond_tar_share_keeps_latest_arrivals():
    # r = 2 -> R = frames 2, 3 (8 tokens) > K_tar = 6: keep 10..15; 8 and 9 compete on VaN
    assert kept(keep=8, tar_ratio=0.75, recent_ratio=0.5) == [[8, 9, 10, 11, 12, 13, 14, 15],
                                                              [0, 1, 10, 11, 12, 13, 14, 15]]


def test_two_recent_frames_then_tar_then_van():
    # K_tar = 12 - round(3) = 9: frames 2, 3 + top-1 TaR; VaN 3 among the rest
    assert kept(keep=12, tar_ratio=0.75, recent_ratio=0.5) == [
        [0, 2, 4, 6, 8, 9, 10, 11, 12, 13, 14, 15], [0, 1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 15]]


def test_baselines():
    assert kept("uniform", keep=5) == [[0, 3, 6, 9, 12]] * 2
    assert kept("sliding_window", keep=5) == [[11, 12, 13, 14, 15]] * 2
    assert kept("full", keep=5) == [list(range(16))] * 2


def test_ties_break_towards_later_arrivals():
    keys = np.broadcast_to(E[0], (2, 16, 4))  # every TaR is -1
    values = np.ones((2, 16, 4), np.float32)  # every VaN is 2
    kw = dict(tokens_per_slot=T, keep=6)
    assert np.array(select_tokens(keys, values, tar_ratio=1.0, **kw)).tolist() == [
        [10, 11, 12, 13, 14, 15]] * 2
    assert np.array(select_tokens(keys, values, tar_ratio=0.0, keep=3, tokens_per_slot=T)
                    ).tolist() == [[13, 14, 15]] * 2


@pytest.mark.parametrize("k", [1, 6999, 7000, 7001, 19999, 20000])
def test_top_k_takes_the_latest_of_many_ties(k):
    """Both backends' top-k: the k highest scores, ties to the later index (the order of a
    stable sort by score descending, then index descending), as ascending indices."""
    import torch

    from infinipot_mlx.reference.select import mask_indices as torch_indices
    from infinipot_mlx.reference.select import top_k_mask as torch_mask

    rng = np.random.default_rng(k)
    scores = rng.integers(0, 3, size=(3, 20000)).astype(np.float32)
    scores[0, rng.integers(0, 20000, 500)] = -np.inf  # masked tokens tie too
    scores[1, rng.integers(0, 20000, 500)] = np.inf
    n = np.arange(20000)
    want = np.stack([np.sort(np.lexsort((-n, -s))[:k]) for s in scores])  # score desc, index desc
    got = np.array(mask_indices(top_k_mask(mx.array(scores), k), k))
    np.testing.assert_array_equal(got, want)
    t = torch.from_numpy(scores)
    np.testing.assert_array_equal(torch_indices(torch_mask(t, k), k).numpy(), want)


def test_holes_recent_clamp_and_fallback():
    # head 0: frames 0:{1,3} 1:{2,3} 2:{0..3} 3:{0,1}: newest frame 3 is not whole, so
    #   R = frame 3 as it is (tokens 8, 9); patches 2, 3 have no reference and score 0.
    # head 1: frames 0:{0..3} 1:{0,2} 2:{0..3}: r = 2 but frame 1 is not whole -> R = frame 2.
    slot_ids = [[0, 0, 1, 1, 2, 2, 2, 2, 3, 3], [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]]
    patch_ids = [[1, 3, 2, 3, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 2, 0, 1, 2, 3]]
    keys = np.zeros((2, 10, 4), np.float32)
    keys[0] = [E[1] + E[2], E[3], E[2], E[3], -E[0], E[1], E[2], E[3], E[0], E[1]]
    # head 0 TaR: 0: -0.71, 4: +1, 5: -1, the rest 0 -> top 4: 4, then 7, 6, 3 (latest ties)
    keys[1] = [E[0], E[1] + E[2], -E[2], E[3], E[1], E[2] + E[3], E[0], E[1], E[2], E[3]]
    # head 1 TaR: 0: -1, 1: -0.71, 2: +1, 3: -1, 4: 0, 5: -0.71 -> top 2: 2, 4
    values = np.ones((2, 10, 4), np.float32)
    out = select_tokens(keys, values, tokens_per_slot=T, keep=6, tar_ratio=1.0,
                        recent_ratio=1.0, slot_ids=slot_ids, patch_ids=patch_ids)
    assert np.array(out).tolist() == [[3, 4, 6, 7, 8, 9], [2, 4, 6, 7, 8, 9]]


def test_select_with_sequence_pooling_spreads_van():
    # layer 2 of 4: 1-D kernel 3 along the 16 tokens; one value of norm 3 per head
    keys, _ = hand_kv()
    values = np.zeros((2, 16, 4), np.float32)
    values[0, 5, 0] = values[1, 0, 0] = 3.0
    kw = dict(tokens_per_slot=T, keep=3, tar_ratio=0.0)
    pooled = select_tokens(keys, values, van_pooling=True, layer_idx=2, num_layers=4, **kw)
    assert np.array(pooled).tolist() == [[4, 5, 6], [0, 1, 15]]  # 15: latest of the zero ties
    assert np.array(select_tokens(keys, values, **kw)).tolist() == [[5, 14, 15], [0, 14, 15]]


def pool(van, layer_idx, num_layers=4, grid_hw=(3, 3), slot_ids=None, patch_ids=None):
    van = np.asarray(van, np.float32)[None]
    tokens = grid_hw[0] * grid_hw[1]
    fi, pi = candidates.resolve_ids(slot_ids, patch_ids, 1, van.shape[1], tokens)
    out = pool_value_norm(mx.array(van), fi, pi, grid_hw, layer_idx, num_layers)
    return np.array(out)[0].tolist()


def test_pooling_2d_per_frame_counts_zero_padding():
    van = np.zeros(18)
    van[0], van[13] = 9.0, 18.0  # frame 0 corner, frame 1 centre; kernel 5 shrinks to 3
    assert pool(van, layer_idx=1) == [1, 1, 0, 1, 1, 0, 0, 0, 0] + [2] * 9


def test_pooling_3d():
    van = np.zeros(27)
    van[13] = 27.0  # centre of the 3 x 3 x 3 grid reaches every cell
    assert pool(van, layer_idx=0) == [1] * 27
    van = np.zeros(27)
    van[0] = 27.0  # corner: frames 0-1 x rows 0-1 x cols 0-1
    want = [0.0] * 27
    for n in (0, 1, 3, 4, 9, 10, 12, 13):
        want[n] = 1.0
    assert pool(van, layer_idx=0) == want


def test_pooling_1d_over_dense_grid_with_holes_and_last_quarter_identity():
    # frames 0 and 5 present; frame 0 misses patch 2: dense slots 0 1 [hole] 3 | 4 5 6 7.
    # The hole counts in neither sum nor divisor; the edge padding counts as zeros.
    fi, pi = [0, 0, 0, 5, 5, 5, 5], [0, 1, 3, 0, 1, 2, 3]
    got = pool([3] * 7, layer_idx=2, grid_hw=(2, 2), slot_ids=fi, patch_ids=pi)
    assert got == [2, 3, 3, 3, 3, 3, 2]
    assert pool([3] * 7, layer_idx=3, grid_hw=(2, 2), slot_ids=fi, patch_ids=pi) == [3] * 7


@pytest.mark.parametrize("kw, message", [
    (dict(keep=0), "keep must be between 1"),
    (dict(keep=17), "keep must be between 1"),
    (dict(keep=4, method="random"), "unknown method"),
    (dict(keep=4, tar_ratio=1.5), "tar_ratio"),
    (dict(keep=4, van_pooling=True, grid_hw=(3, 2)), "rows \\* cols"),
    (dict(keep=4, slot_ids=np.zeros((2, 16), int)), "together"),
    (dict(keep=4, slot_ids=np.zeros((2, 16), int), patch_ids=np.zeros((2, 16), int)),
     "appears twice"),
])
def test_bad_requests_raise_value_error(kw, message):
    keys, values = hand_kv()
    with pytest.raises(ValueError, match=message):
        select_tokens(keys, values, tokens_per_slot=T, **kw)


def test_pooling_needs_grid_for_non_square_frames():
    keys = np.ones((1, 12, 2), np.float32)
    for tar_ratio in (0.5, 1.0):  # also when the VaN share is empty
        with pytest.raises(ValueError, match="grid_hw"):
            select_tokens(keys, keys, tokens_per_slot=6, keep=6, van_pooling=True,
                          tar_ratio=tar_ratio)
    with pytest.raises(ValueError, match="layer_idx"):
        select_tokens(keys, keys, tokens_per_slot=6, keep=6, van_pooling=True, grid_hw=(2, 3),
                      layer_idx=4, num_layers=4)
    out = select_tokens(keys, keys, tokens_per_slot=6, keep=6, van_pooling=True, grid_hw=(2, 3))
    assert out.shape == (1, 6)


# ---------------------------------------------------------------- hypothesis properties
# The oracles below compute every rule and score from ALGORITHM.md's definitions in plain
# numpy float64 and import nothing from the package (oracle_pool: tests/test_pooling.py).

@st.composite
def selection_case(draw):
    """Random KV of one layer, optionally after a previous compression (holes per head)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads, dim = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    grid = draw(st.sampled_from([(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]))
    tokens = grid[0] * grid[1]
    frames = draw(st.integers(1, 6))
    n_full = frames * tokens
    n_cand = draw(st.integers(1, n_full)) if draw(st.booleans()) else n_full
    slots = np.stack([np.sort(rng.choice(n_full, n_cand, replace=False)) for _ in range(heads)])
    return dict(
        keys=rng.standard_normal((heads, n_cand, dim)).astype(np.float32),
        values=rng.standard_normal((heads, n_cand, dim)).astype(np.float32),
        slot_ids=slots // tokens, patch_ids=slots % tokens, tokens_per_slot=tokens,
        grid_hw=grid, keep=draw(st.integers(1, n_cand)),
        tar_ratio=draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.3])),
        recent_ratio=draw(st.sampled_from([0.1, 0.25, 0.5, 1.0])),
        van_pooling=draw(st.booleans()), layer_idx=draw(st.integers(0, 7)), num_layers=8)


def oracle_tar_share(keep, tar_ratio):
    """K_tar = K - round((1 - tar_ratio) * K), Python's round."""
    return keep - round((1.0 - tar_ratio) * keep)


def oracle_recent(slot_ids, tokens, recent_ratio):
    """Recent mask straight from the rule: newest r = max(1, floor(F * ratio)) frames by id,
    clamped to the unbroken run of whole ones; the newest frame alone if it is not whole."""
    mask = np.zeros(slot_ids.shape, bool)
    r = max(1, int(slot_ids.shape[1] // tokens * recent_ratio))
    for h, ids in enumerate(slot_ids):
        newest_first = sorted(set(ids.tolist()), reverse=True)
        whole = 0
        while whole < len(newest_first) and (ids == newest_first[whole]).sum() == tokens:
            whole += 1
        chosen = newest_first[:min(r, whole)] if whole else newest_first[:1]
        mask[h] = np.isin(ids, chosen)
    return mask


def oracle_tar(keys, patch_ids, recent):
    """TaR (H, N) float64: -mean over the recent tokens r of the same patch of
    cos(k_n, k_r) = k_n.k_r / ((|k_n| + 1e-9)(|k_r| + 1e-9)); 0 without such tokens."""
    keys = keys.astype(np.float64)
    unit = keys / (np.linalg.norm(keys, axis=-1, keepdims=True) + 1e-9)
    out = np.zeros(patch_ids.shape)
    for h, n in np.ndindex(*patch_ids.shape):
        same = recent[h] & (patch_ids[h] == patch_ids[h, n])
        out[h, n] = -np.mean(unit[h, same] @ unit[h, n]) if same.any() else 0.0
    return out


def oracle_van(case):
    """VaN (H, N) float64: the value norm, pooled as test_pooling.oracle_pool defines when
    van_pooling is on; the quarter (layer_idx * 4) // num_layers pools 3, 2, 1, 0 axes."""
    van = np.linalg.norm(case["values"].astype(np.float64), axis=-1)
    axes = 3 - (case["layer_idx"] * 4) // case["num_layers"]
    if not case["van_pooling"] or axes == 0:
        return van
    return oracle_pool(van, case["slot_ids"], case["patch_ids"], case["grid_hw"], axes)


def assert_top(kept, scores, allowed, count, tol=1e-5):
    """kept is `count` of the allowed indices, none outranked by one left out: a higher
    score (beyond tol: the package scores in float32) or an equal one arrived later."""
    allowed = set(np.flatnonzero(allowed).tolist())
    assert kept <= allowed and len(kept) == min(count, len(allowed))
    for a in kept:
        for b in allowed - kept:
            assert scores[b] <= scores[a] + tol, (a, b, scores[a], scores[b])
            assert not (scores[b] == scores[a] and b > a), (a, b, scores[a])


@settings(max_examples=150, deadline=None)
@given(selection_case())
def test_infinipot_v_properties(case):
    out = np.array(select_tokens(**case))
    heads, n_cand = case["slot_ids"].shape
    keep, tokens = case["keep"], case["tokens_per_slot"]
    assert out.shape == (heads, keep)
    assert np.all(np.diff(out, axis=1) > 0) and out.min() >= 0 and out.max() < n_cand
    k_tar = oracle_tar_share(keep, case["tar_ratio"])
    recent = oracle_recent(case["slot_ids"], tokens, case["recent_ratio"])
    tar = oracle_tar(case["keys"], case["patch_ids"], recent)
    van = oracle_van(case)
    for h in range(heads):
        kept = set(out[h].tolist())
        rec = np.flatnonzero(recent[h]).tolist()
        forced = set(rec[max(0, len(rec) - k_tar):]) if k_tar else set()
        assert forced <= kept  # recent frames kept as far as the TaR share allows
        tar_count = k_tar - len(forced)  # the TaR picks: the kept non-recent tokens of top TaR
        tar_pick = set(sorted(kept - set(rec), key=lambda n: (-tar[h, n], -n))[:tar_count])
        assert_top(tar_pick, tar[h], ~recent[h], tar_count)  # top TaR among non-recent
        first = forced | tar_pick
        rest = np.array([n not in first for n in range(n_cand)])
        assert_top(kept - first, van[h], rest, keep - k_tar)  # VaN share


@settings(max_examples=60, deadline=None)
@given(selection_case())
def test_scores_match_their_definitions(case):
    tokens = case["tokens_per_slot"]
    recent = oracle_recent(case["slot_ids"], tokens, case["recent_ratio"])
    got = np.array(temporal_redundancy(mx.array(case["keys"]), case["patch_ids"], recent, tokens))
    np.testing.assert_allclose(got, oracle_tar(case["keys"], case["patch_ids"], recent),
                               atol=1e-5)
    van = value_norm(mx.array(case["values"]))
    if case["van_pooling"]:
        van = pool_value_norm(van, case["slot_ids"], case["patch_ids"], case["grid_hw"],
                              case["layer_idx"], case["num_layers"])
    np.testing.assert_allclose(np.array(van), oracle_van(case), rtol=1e-5)
