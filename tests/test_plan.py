"""Tier 1: capacity arithmetic and config validation (pure Python)."""

import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.contract import plan


def test_paper_block_schedule():
    # capacity = 32 slots of 256 tokens + a 100-token prompt + reserve; blocks of 8 slots
    T, prompt, reserve = 256, 100, 512
    capacity = 32 * T + prompt + reserve
    cached = prompt + 32 * T
    incoming = plan.block_tokens(8, T)
    assert plan.needs_compression(cached, incoming, capacity, reserve)
    assert plan.keep_target(capacity, reserve, prompt, incoming) == 24 * T
    assert not plan.needs_compression(prompt + 24 * T, incoming, capacity, reserve)


def test_tar_share_rounds_half_to_even():
    assert plan.tar_share(10, 0.5) == 5
    assert plan.tar_share(5, 0.5) == 3  # round(2.5) == 2 -> K_tar = 3
    assert plan.tar_share(7, 0.5) == 3  # round(3.5) == 4 -> K_tar = 3
    assert plan.tar_share(9, 1.0) == 9 and plan.tar_share(9, 0.0) == 0


def test_recent_count():
    assert plan.recent_count(3, 0.25) == 1
    assert plan.recent_count(32, 0.25) == 8
    assert plan.recent_count(9, 0.25) == 2


def test_min_capacity_is_tight():
    cap = plan.min_capacity(256, 8, 512, n_pinned=40)
    InfiniPotConfig(capacity=cap).check_fits(256, n_pinned=40)
    with pytest.raises(ValueError, match="less than one slot"):
        InfiniPotConfig(capacity=cap - 1).check_fits(256, n_pinned=40)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="h2o"), "unknown method"),
        (dict(block_slots=0), "block_slots"),
        (dict(tar_ratio=1.5), "tar_ratio"),
        (dict(recent_ratio=0.0), "recent_ratio"),
        (dict(capacity=100, reserve=512), "above the reserve"),
        (dict(capacity=None), "needs a capacity"),
        (dict(position_policy="relative"), "position policy"),
    ],
)
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InfiniPotConfig(**kwargs)


def test_full_needs_no_capacity():
    cfg = InfiniPotConfig(capacity=None, method="full")
    assert not cfg.bounded
    cfg.check_fits(256, n_pinned=10_000)  # never compresses, never rejects
