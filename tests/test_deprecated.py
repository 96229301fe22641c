"""The names before 0.2 ("frame" for a temporal slot) still work, each with one
DeprecationWarning that names the new one, and give the same results."""

import subprocess
import sys

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig, reference, select_tokens
from infinipot_mlx.mlx.cache import LayerKVCache


def keys_values(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 24, 8)).astype(np.float32) for _ in range(2))  # (H, N, D)


@pytest.mark.parametrize("select", [select_tokens, reference.select_tokens], ids=["mlx", "reference"])
def test_select_tokens_takes_the_old_keywords(select):
    keys, values = keys_values()
    slot_ids = np.tile(np.arange(24) // 4, (2, 1))[:, ::-1].copy()  # not the default labels
    patch_ids = np.tile(np.arange(24) % 4, (2, 1))
    new = select(keys, values, tokens_per_slot=4, keep=8, slot_ids=slot_ids, patch_ids=patch_ids)
    with pytest.warns(DeprecationWarning, match="tokens_per_frame, frame_ids are deprecated; use tokens_per_slot, slot_ids"):
        old = select(keys, values, tokens_per_frame=4, keep=8, frame_ids=slot_ids, patch_ids=patch_ids)
    np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    with pytest.raises(TypeError, match="both tokens_per_frame and tokens_per_slot"):
        select(keys, values, tokens_per_frame=4, tokens_per_slot=4, keep=8)


def test_config_takes_and_reads_block_frames():
    with pytest.warns(DeprecationWarning, match="block_frames is deprecated; use block_slots"):
        config = InfiniPotConfig(block_frames=3)
    assert config == InfiniPotConfig(block_slots=3)
    with pytest.warns(DeprecationWarning):
        assert config.block_frames == 3


def test_the_cache_answers_to_frame_ids():
    cache = LayerKVCache()
    keys = np.zeros((1, 2, 3, 4), np.float32)
    cache.label_next([-1, 0, 0], [-1, 0, 1])
    import mlx.core as mx
    cache.update_and_fetch(mx.array(keys), mx.array(keys))
    with pytest.warns(DeprecationWarning, match="use slot_ids"):
        np.testing.assert_array_equal(cache.frame_ids, cache.slot_ids)


@pytest.mark.parametrize("command", ["chat", "parity", "server"])
def test_the_old_flag_still_parses(command):
    import importlib

    parser = importlib.import_module(f"infinipot_mlx.cli.{command}").build_parser()
    before = {"chat": ["v.mp4"], "parity": ["--model", "m", "--video", "v.mp4"], "server": []}[command]
    assert parser.parse_args(before + ["--block-frames", "3"]).block_slots == 3
    help_text = subprocess.run([sys.executable, "-m", f"infinipot_mlx.{command}", "--help"],
                               capture_output=True, text=True).stdout
    help_text = " ".join(help_text.split())  # argparse wraps to the terminal width
    assert "--block-slots N, --block-frames N" in help_text and "name before 0.2" in help_text
