"""Positions (ALGORITHM.md section 6) against hand-written tables, and the pixel path."""

import numpy as np
import pytest

from infinipot_mlx.contract.pixels import qwen_patchify
from infinipot_mlx.contract.positions import mrope_stock_mlx_vlm, mrope_video_positions, next_after, text_positions


def test_text_positions():
    assert text_positions(5, 3).tolist() == [[5, 6, 7]] * 3
    assert text_positions(5, 3, axes=1).tolist() == [5, 6, 7]


def test_video_table_2fps():
    # 2x2 merged grid, 2 slots, video opens at position 3; fps 2 -> second_per_grid 1.0,
    # tokens_per_second 2 -> t advances 2 per slot.
    pos = mrope_video_positions(3, 0, 2, (2, 2), second_per_grid=1.0, tokens_per_second=2)
    assert pos.tolist() == [
        [3, 3, 3, 3, 5, 5, 5, 5],  # t
        [3, 3, 4, 4, 3, 3, 4, 4],  # h
        [3, 4, 3, 4, 3, 4, 3, 4],  # w
    ]
    assert next_after(pos) == 6  # text after the video: max + 1


def test_video_table_blockwise_equals_whole():
    whole = mrope_video_positions(10, 0, 6, (3, 2), second_per_grid=2 / 3, tokens_per_second=2)
    blocks = [mrope_video_positions(10, s, 2, (3, 2), 2 / 3, 2) for s in (0, 2, 4)]
    assert np.array_equal(whole, np.concatenate(blocks, axis=1))
    # floor of the floating product: slots 0..5 * 4/3 -> 0, 1, 2, 4, 5, 6
    assert whole[0, ::6].tolist() == [10, 11, 12, 14, 15, 16]


def test_stock_mlx_vlm_drops_time_scaling():
    ours = mrope_video_positions(3, 0, 3, (2, 2), second_per_grid=1.0, tokens_per_second=2)
    stock = mrope_stock_mlx_vlm(3, 3, (2, 2))
    assert stock[0, ::4].tolist() == [3, 4, 5]  # t = slot
    assert ours[0, ::4].tolist() == [3, 5, 7]  # t = slot * 2 s/slot... * 2 tokens/s / 2
    assert np.array_equal(ours[1:], stock[1:])  # h and w agree


def test_qwen_patchify_matches_transformers_layout():
    # transformers' numpy image patchify repeats one frame over the temporal patch; feed
    # ours two copies of the same frame and the layouts must agree exactly.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    ours, grid = qwen_patchify(np.stack([frame, frame]), mean, std)
    chw = ((frame.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
    theirs, gh, gw = Qwen2VLImageProcessorPil.patchify(None, chw, 14, 2, 2)
    assert grid == (1, gh, gw) == (1, 4, 6)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_qwen_patchify_temporal_order():
    # element (c, t, y, x) of a patch comes from frame t: frames filled with their index
    frames = np.stack([np.full((28, 28, 3), v, np.uint8) for v in (10, 20)])
    ours, _ = qwen_patchify(frames, (0, 0, 0), (1, 1, 1))
    patch = ours.reshape(-1, 3, 2, 14, 14)
    assert np.allclose(patch[:, :, 0] * 255, 10) and np.allclose(patch[:, :, 1] * 255, 20)


def test_qwen_patchify_rejects_odd_sizes():
    with pytest.raises(ValueError, match="do not tile"):
        qwen_patchify(np.zeros((3, 56, 56, 3), np.uint8), (0, 0, 0), (1, 1, 1))
