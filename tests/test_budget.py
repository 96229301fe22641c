"""The memory budget manager: plan arithmetic (tier 1) and the tiny-model budget held (tier 3)."""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.contract import budget
from infinipot_mlx.mlx import memory_probe as probes
from infinipot_mlx.contract.specs import qwen2_5_vl_spec

# The numbers the arithmetic reads, from the published config.json files.
QWEN_7B = {  # Qwen/Qwen2.5-VL-7B-Instruct (hub layout: text parameters at the top level)
    "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "vocab_size": 152064,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "out_hidden_size": 3584},
}
LLAVA_7B = {  # llava-hf/llava-onevision-qwen2-7b-ov-hf (text: Qwen2-7B; vision: SigLIP so400m)
    "model_type": "llava_onevision",
    "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
                    "vocab_size": 152128},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
                      "image_size": 384, "patch_size": 14},
}
QWEN3_8B = {  # Qwen/Qwen3-VL-8B-Instruct (nested text_config; 16-px patches; DeepStack)
    "model_type": "qwen3_vl",
    "text_config": {"model_type": "qwen3_vl_text", "hidden_size": 4096, "intermediate_size": 12288,
                    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
                    "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 262144},
    "vision_config": {"model_type": "qwen3_vl", "depth": 27, "hidden_size": 1152, "intermediate_size": 4304,
                      "num_heads": 16, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "out_hidden_size": 4096, "deepstack_visual_indexes": [8, 16, 24]},
}
W4 = 5_600_000_000  # weights assumed for a 4-bit 7B MLX checkpoint (LM 4.5 bits/weight, vision bf16)
GB = 1e9
KV_BF16 = 28 * 2 * 4 * 128 * 2  # layers x (K, V) x H_kv x D x bf16 = 57,344 bytes per token


def test_kv_bytes_per_token_of_the_7b_configs():
    for config in (QWEN_7B, LLAVA_7B):
        assert budget.kv_bytes_per_token(budget.model_dims(config), 2) == KV_BF16
    assert qwen2_5_vl_spec(QWEN_7B, {}).kv_bytes_per_token(2) == KV_BF16  # the session's figure
    dims = budget.model_dims(LLAVA_7B)
    assert (dims.head_dim, dims.frame_patches) == (128, 27 * 27)


def test_kv_bytes_per_token_of_qwen3_vl_8b():
    from infinipot_mlx.contract.specs import qwen3_vl_spec

    kv = 36 * 2 * 8 * 128 * 2  # layers x (K, V) x H_kv x D x bf16 = 147,456 bytes per token
    assert budget.kv_bytes_per_token(budget.model_dims(QWEN3_8B), 2) == kv
    spec = qwen3_vl_spec(QWEN3_8B, {})
    assert spec.kv_bytes_per_token(2) == kv and spec.tokens_per_slot((448, 448)) == 196  # 14 x 14
    dims = budget.model_dims(QWEN3_8B)
    assert (dims.vision_hidden, dims.patch_values, dims.merge) == (1152, 3 * 2 * 16 * 16, 2)


def qwen_hand_plan(budget_bytes: float, weights: float, scores: bool) -> int:
    """Section 8 by hand for Qwen2.5-VL-7B, bf16, frames of 448x448 (T = 256), blocks of 8."""
    T, S, L = 256, 8, 8 * 256
    prefill = (L * (5 * 3584 + 2 * (28 + 2 * 4) * 128 + 28 * 128 + 3 * 18944) + 152064) * 2
    patches, seq = S * 4 * T, 4 * T  # 2x2 merged patches per token; one frame attends at a time
    vision = patches * (1176 * (4 + 2 * 2) + (7 * 1280 + 3 * 3420) * 2 + 2 * 3584 * 2) \
        + 16 * seq * seq * 2
    activations = max(prefill, vision)
    assert activations == vision == 542_965_760  # the vision tower on 16 frames dominates
    context = max(L * (1 + (28 * 2 if scores else 0)), 4 * 128 * (6 * 4 + 2 * 2))
    free = budget_bytes - 0.05 * budget_bytes - weights - activations
    return int(free // (KV_BF16 + context))


@pytest.mark.parametrize("scores", [False, True], ids=["metal-fused", "cpu-scores"])
def test_qwen_7b_plan_matches_hand_computation(scores):
    plan = budget.plan_from_config(QWEN_7B, 16 * GB, W4, tokens_per_slot=256,
                                   scores_materialized=scores)
    assert plan.capacity == qwen_hand_plan(16 * GB, W4, scores)
    assert plan.capacity == (52_028 if scores else 126_353)
    assert plan.slots == (plan.capacity - 512) // 256
    assert plan.peak_bytes <= 16 * GB * 0.95


def test_plan_line():
    plan = budget.plan_from_config(QWEN_7B, 16 * GB, W4, tokens_per_slot=256)
    assert plan.line() == ("model 5.6 GB | KV 57.3 KB/token | capacity 126,353 tokens = 491 slots "
                           "of 256 | block 8 slots (543 MB) | peak <= 15.2 GB of 16 GB")
    quantized = budget.plan_from_config(QWEN_7B, 16 * GB, W4, tokens_per_slot=256, kv_bits=4)  # the README's
    assert quantized.line() == ("model 5.6 GB | KV 16.1 KB/token at 4 bits (3.6x the tokens of 2-byte KV) | "
                                "capacity 297,302 tokens = 1,159 slots of 256 | block 8 slots (543 MB) | "
                                "peak <= 15.2 GB of 16 GB")


def test_llava_7b_plan_matches_hand_computation():
    T, S, L = 196, 8, 8 * 196  # 27x27 SigLIP patches pooled 2x to 14x14 per frame
    prefill = (L * (5 * 3584 + 2 * (28 + 8) * 128 + 28 * 128 + 3 * 18944) + 152128) * 2  # last logits
    vision = S * 729 * (588 * 8 + (7 * 1152 + 3 * 4304) * 2 + 2 * 3584 * 2) \
        + S * 16 * 729 * 729 * 2  # all frames of the block attend at once
    activations = max(prefill, vision)
    context = max(L, 4 * 128 * 28)
    free = 16 * GB * 0.95 - W4 - activations
    plan = budget.plan_from_config(LLAVA_7B, 16 * GB, W4, tokens_per_slot=T)
    assert plan.activation_bytes == activations
    assert plan.capacity == int(free // (KV_BF16 + context)) == 127_068


@pytest.mark.parametrize("config,T", [(QWEN_7B, 256), (LLAVA_7B, 196)], ids=["qwen", "llava"])
def test_6gb_cannot_hold_a_4bit_7b_and_says_the_minimum(config, T):
    with pytest.raises(ValueError, match=r"the minimum is \d+(\.\d+)? GB") as err:
        budget.plan_from_config(config, 6 * GB, W4, tokens_per_slot=T)
    minimum = float(re.search(r"minimum is ([\d.]+) GB", str(err.value)).group(1))
    assert 6 < minimum < 8
    budget.plan_from_config(config, int(minimum * GB), W4, tokens_per_slot=T)  # enough


def test_the_stated_minimum_is_the_smallest_budget():
    with pytest.raises(ValueError, match="minimum") as err:
        budget.plan_from_config(QWEN_7B, 8 * GB, 16_600_000_000, tokens_per_slot=256)  # bf16
    minimum = float(re.search(r"minimum is ([\d.]+) GB", str(err.value)).group(1))
    plan = budget.plan_from_config(QWEN_7B, int(minimum * GB), 16_600_000_000, tokens_per_slot=256)
    assert plan.capacity >= 512 + 2048 + 256  # reserve + block + one frame
    with pytest.raises(ValueError):
        budget.plan_from_config(QWEN_7B, int((minimum - 0.1) * GB), 16_600_000_000,  # 3 digits
                                tokens_per_slot=256)


def test_measured_activations_raise_the_bound():
    plain = budget.plan_from_config(QWEN_7B, 16 * GB, W4, tokens_per_slot=256)
    calibrated = budget.plan_from_config(QWEN_7B, 16 * GB, W4, tokens_per_slot=256,
                                         measured_activation_bytes=2 * GB)
    assert calibrated.activation_bytes == 2 * GB and calibrated.capacity < plain.capacity
    assert calibrated.computed_activation_bytes == plain.activation_bytes


@pytest.mark.parametrize("text,expected", [
    ("6GB", 6e9), ("6 gb", 6e9), ("6.5 GiB", 6.5 * 2**30), ("512MB", 512e6), ("60%", 38.4e9),
    (None, budget.DEFAULT_FRACTION * 64e9), ("2GB", 2e9), ("100%", 64e9), ("1000000B", 1e6),
])
def test_parse_budget(text, expected):
    assert budget.parse_budget(text, 64_000_000_000) == int(expected)


@pytest.mark.parametrize("text,message", [
    ("lots", "not a size"), ("6 parsecs", "not a size"), ("0GB", "positive"),
    ("150%", "share"), ("0%", "share"), ("128GB", "exceeds"), ("2", "give a unit"), ("0", "give a unit"),
])
def test_parse_budget_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        budget.parse_budget(text, 64_000_000_000)


@pytest.mark.parametrize("text,share_of,expected", [
    ("2GB", None, 2e9), ("512MiB", None, 512 * 2**20), ("64MB", None, 64e6), ("1000000B", None, 1e6),
    ("250KB", None, 250e3), ("60%", 10_000, 6_000), ("100%", 10_000, 10_000),
])
def test_one_size_parser_for_every_size_flag(text, share_of, expected):
    """parse_size reads --memory and the server's byte limits alike."""
    assert budget.parse_size(text, "--max-body-bytes", share_of) == int(expected)


@pytest.mark.parametrize("text,share_of,message", [
    ("6", None, "--max-body-bytes 6: give a unit (a bare number could be bytes or GB)"),
    ("60%", None, "not a size"),  # a share only where there is a whole to take it of
    ("150%", 10_000, "not a share of memory in (0, 100]%"), ("0%", 10_000, "not a share"),
    ("0MB", None, "must be positive"), ("lots", None, "not a size"),
])
def test_the_size_parser_refuses_with_one_line(text, share_of, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        budget.parse_size(text, "--max-body-bytes", share_of)
    assert "\n" not in str(caught.value)


def test_memory_probe_reports_live_figures():
    import mlx.core as mx

    keep = mx.ones((1000, 1000))
    mx.eval(keep)
    reading = probes.memory_probe()
    assert reading.active >= keep.nbytes and reading.peak >= reading.active
    assert reading.total > 2**30 and reading.metal == mx.metal.is_available()


# ----- tier 3: the tiny Qwen2.5-VL ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    from infinipot_mlx.mlx.backend import load_model

    return load_model(str(tiny_qwen_dir))


def tiny_plan(tiny, memory: str, calibrate: bool = True, **shape):
    import json

    from infinipot_mlx.stream.session import StreamSession

    model, tokenizer, spec, path = tiny
    make = (lambda cfg: StreamSession(model, tokenizer, spec, cfg)) if calibrate else None
    config = json.loads((Path(path) / "config.json").read_text())
    return probes.plan_session(memory, model, tokenizer, spec, config, make_session=make, **shape)


SHAPE = dict(frame_hw=(112, 112), block_slots=4, reserve=32)  # T = 16, blocks of 64 tokens


def test_tiny_weights_are_measured(tiny):
    plan = tiny_plan(tiny, "9MB", calibrate=False, **SHAPE)
    on_disk = (Path(tiny[3]) / "model.safetensors").stat().st_size
    assert plan.weight_bytes == probes.weight_bytes(tiny[0])
    assert abs(plan.weight_bytes - on_disk) < 0.01 * on_disk  # float32 on disk, float32 loaded
    assert plan.kv_bytes_per_token == 2 * 2 * 2 * 32 * 4  # layers x (K, V) x H_kv x D x float32


def test_tiny_budget_holds_over_a_stream_10x_the_capacity(tiny):
    import mlx.core as mx

    from infinipot_mlx.stream.session import StreamSession

    plan = tiny_plan(tiny, "9MB", **SHAPE)
    assert 100 < plan.capacity < 1000 and plan.measured_activation_bytes > 0
    model, tokenizer, spec, _ = tiny
    session = StreamSession(model, tokenizer, spec, InfiniPotConfig(
        capacity=plan.capacity, block_slots=SHAPE["block_slots"], reserve=SHAPE["reserve"]))
    rng = np.random.default_rng(0)
    n_frames = 2 * math.ceil(10 * plan.capacity / plan.tokens_per_slot)  # 2 sampled frames a slot
    most = 0
    for _ in range(0, n_frames, 16):
        session.add_frames(rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8))
        most = max(most, session.cache.n_cached)
    "".join(session.ask("What happened?", max_tokens=4))
    assert session.counters.slots_seen * plan.tokens_per_slot >= 10 * plan.capacity
    assert session.counters.compressions > 10 and most <= plan.capacity
    assert mx.get_peak_memory() <= plan.peak_bytes <= plan.budget_bytes


def test_tiny_impossible_budget_states_a_sufficient_minimum(tiny):
    with pytest.raises(ValueError, match="minimum") as err:
        tiny_plan(tiny, "1MB", **SHAPE)
    minimum = re.search(r"minimum is ([\d.]+) GB", str(err.value)).group(1)
    assert tiny_plan(tiny, f"{minimum}GB", calibrate=False, **SHAPE).capacity >= \
        32 + 64 + 16  # reserve + block + one frame (+ the pinned prompt)


def test_cli_impossible_budget_exits_2_with_the_minimum(tmp_path, tiny_qwen_dir):
    from videos import moving_shapes_video

    video = moving_shapes_video(tmp_path / "clip.mp4", n=20)
    done = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model",
                           str(tiny_qwen_dir), "--memory", "1MB", "-q", "What moved?"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"the minimum is [\d.]+ GB", lines[0]), done.stderr


def test_cli_memory_prints_the_plan_and_stats_show_it(tmp_path, tiny_qwen_dir):
    from videos import moving_shapes_video

    video = moving_shapes_video(tmp_path / "clip.mp4", n=20)
    done = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model",
                           str(tiny_qwen_dir), "--memory", "40MB", "--max-tokens", "3"],
                          input="/stats\nWhat moved?\n/quit\n", capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    plan = re.search(r"model [\d.]+ MB \| KV [\d.]+ KB/token \| capacity ([\d,]+) tokens", done.stdout)
    assert plan, done.stdout
    assert f"/ capacity {plan.group(1).replace(',', '')} |" in done.stdout  # the session uses it
    assert re.search(r"memory: active [\d.]+ MB, peak [\d.]+ MB of planned [\d.]+ MB, budget 40 MB",
                     done.stdout)


def test_cli_memory_on_qwen3_vl(tmp_path, tiny_qwen3_vl_dir):
    """--memory plans a Qwen3-VL session (its slot text counted under the planned capacity)."""
    from videos import moving_shapes_video

    video = moving_shapes_video(tmp_path / "clip.mp4", n=20)
    done = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model",
                           str(tiny_qwen3_vl_dir), "--memory", "400MB", "--max-tokens", "3"],
                          input="/stats\nWhat moved?\n/quit\n", capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    plan = re.search(r"capacity ([\d,]+) tokens", done.stdout)
    assert plan, done.stdout
    assert f"/ capacity {plan.group(1).replace(',', '')} |" in done.stdout
