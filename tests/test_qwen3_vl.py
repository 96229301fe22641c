"""Qwen3-VL groundwork: the tiny checkpoint (Qwen/Qwen3-VL-8B-Instruct layout) and the ground
truth of its video prompt in transformers 5 and mlx-vlm, on a tiny float32 checkpoint.

Layout: the chat template writes <|vision_start|><|video_pad|><|vision_end|>; the processor
writes, per temporal group (slot) s, "<{t_s:.1f} seconds>" <|vision_start|> T x <|video_pad|>
<|vision_end|>. mlx-vlm's processor replaces the whole triplet (no outer markers), as the
original Qwen3-VL processor (transformers 4.57) did, and so does transformers' from 5.25;
transformers 5.24 (earlier 5.x unchecked) replaces the <|video_pad|> alone, so the
template's outer <|vision_start|> / <|vision_end|> stay around all groups
(test_video_prompt_layout branches on the installed version). Positions: text counts up by one; a slot's visual
tokens at v get (v, v + row, v + col); the text after it starts at v + max(R, C).
"""

import json
import re
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from packaging.version import Version
import torch  # (a dev dependency: a missing torch must fail, not skip)

from infinipot_mlx.contract.positions import next_after, qwen3_group_positions, qwen3_timestamp_text, text_positions

TOL = 1e-4
QUESTION = "What moved?"
PAD, START, END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"


def frames_for(n: int, hw: tuple[int, int] = (64, 96), seed: int = 0) -> np.ndarray:
    """n random RGB frames (n, H, W, 3) uint8; 64 x 96 px is a 2 x 3 merged grid (32 px each)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hf(tiny_qwen3_vl_dir):
    """(transformers model, transformers' own Qwen3VLProcessor). The class is named, not
    AutoProcessor: once mlx_vlm.models.qwen3_vl is imported, AutoProcessor returns mlx-vlm's."""
    import transformers

    model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_qwen3_vl_dir)).eval()
    return model, transformers.Qwen3VLProcessor.from_pretrained(str(tiny_qwen3_vl_dir))


@pytest.fixture(scope="module")
def mlx_model(tiny_qwen3_vl_dir):
    import mlx_vlm

    return mlx_vlm.load(str(tiny_qwen3_vl_dir))[0]


def hf_video_prompt(processor, frames: np.ndarray, fps: float):
    """The processor's full video prompt for frames sampled at `fps` from frame 0."""
    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    meta = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(range(len(frames))))
    return processor(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False,
                     cap_pixels_per_frame=False, return_tensors="pt")


# ----- 1. the checkpoint ------------------------------------------------------------------------
def test_checkpoint_layout_and_loading(hf, mlx_model, tiny_qwen3_vl_dir):
    import transformers

    d = tiny_qwen3_vl_dir
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"] and config["model_type"] == "qwen3_vl"
    text, vision = config["text_config"], config["vision_config"]
    assert text["model_type"] == "qwen3_vl_text" and text["head_dim"] == 32 and text["rope_theta"] == 5000000
    assert text["rope_scaling"] == {"mrope_interleaved": True, "mrope_section": [6, 5, 5], "rope_type": "default"}
    assert vision["model_type"] == "qwen3_vl" and vision["deepstack_visual_indexes"] == [0, 1]
    assert {"depth", "hidden_size", "out_hidden_size", "num_heads", "intermediate_size", "patch_size",
            "spatial_merge_size", "temporal_patch_size", "num_position_embeddings"} <= set(vision)
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (16, 2, 2)
    assert vision["out_hidden_size"] == text["hidden_size"] and config["tie_word_embeddings"] is False
    tok = json.loads((d / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    ids = {v["content"]: int(k) for k, v in tok.items()}
    assert [ids[t] for t in (START, END, "<|image_pad|>", PAD)] == [
        config["vision_start_token_id"], config["vision_end_token_id"], config["image_token_id"],
        config["video_token_id"]]
    assert max(ids, key=ids.get) == "</think>" and ids["</think>"] == text["vocab_size"] - 1
    video = json.loads((d / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor" and video["image_mean"] == [0.5] * 3
    # both backends open it
    model, processor = hf
    assert isinstance(model, transformers.Qwen3VLForConditionalGeneration)
    assert model.config.text_config.rope_parameters["mrope_section"] == [6, 5, 5]
    assert type(mlx_model).__module__ == "mlx_vlm.models.qwen3_vl.qwen3_vl"
    assert type(processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    # AutoProcessor: transformers' class in a fresh process; here (mlx_vlm.models.qwen3_vl
    # imported) mlx-vlm's patch answers for model_type qwen3_vl
    code = f"import transformers; print(type(transformers.AutoProcessor.from_pretrained({str(d)!r})).__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.stdout.split()[-1] == "transformers.models.qwen3_vl.processing_qwen3_vl", out.stderr
    assert type(transformers.AutoProcessor.from_pretrained(str(d))).__module__ == \
        "mlx_vlm.models.qwen3_vl.processing_qwen3_vl"


# ----- 2. ground truth of the video prompt --------------------------------------------------------
def test_chat_template_has_no_default_system_message(hf):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = hf[1].apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == f"<|im_start|>user\n{START}{PAD}{END}{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def test_video_prompt_layout(hf, tiny_qwen3_vl_dir):
    import transformers
    from mlx_vlm.models.qwen3_vl.processing_qwen3_vl import (
        Qwen3VLProcessor as MlxProcessor,
    )

    processor, fps = hf[1], 2.0
    out = hf_video_prompt(processor, frames_for(4), fps)
    assert out["video_grid_thw"].tolist() == [[2, 4, 6]]  # 2 slots of a 2 x 3 merged grid
    groups = "".join(qwen3_timestamp_text(s, fps) + START + PAD * 6 + END for s in range(2))
    assert groups.startswith("<0.2 seconds>") and "<1.2 seconds>" in groups
    tail = f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    # transformers 5.24 keeps the template's outer markers; 5.25 writes the original layout
    outer = (START, END) if Version(transformers.__version__) < Version("5.25") else ("", "")
    theirs = f"<|im_start|>user\n{outer[0]}{groups}{outer[1]}{tail}"
    assert processor.tokenizer.decode(out["input_ids"][0]) == theirs
    # mlx-vlm's processor drops the outer markers (the original Qwen3-VL layout)
    mlx_proc = MlxProcessor.from_pretrained(str(tiny_qwen3_vl_dir))
    prompt = f"<|im_start|>user\n{START}{PAD}{END}{tail}"
    mine = mlx_proc(text=[prompt], videos=[frames_for(4)], fps=[fps], return_tensors="np")
    assert processor.tokenizer.decode(np.array(mine["input_ids"][0]).tolist()) == f"<|im_start|>user\n{groups}{tail}"
    np.testing.assert_allclose(np.array(mine["pixel_values_videos"]), out["pixel_values_videos"].numpy(), atol=1e-5)


@pytest.mark.parametrize("n_frames,fps", [(4, 2.0), (8, 3.0), (5, 1.0), (6, 0.6)])
def test_timestamp_text_matches_processor(hf, n_frames, fps):
    out = hf_video_prompt(hf[1], frames_for(n_frames), fps)
    text = hf[1].tokenizer.decode(out["input_ids"][0])
    slots = int(out["video_grid_thw"][0, 0])
    assert slots == (n_frames + 1) // 2  # an odd count repeats the last frame
    ours = [qwen3_timestamp_text(s, fps, 2, n_frames) for s in range(slots)]
    assert re.findall(r"<[0-9.]+ seconds>", text) == ours


def split_groups(types: list[int]) -> tuple[list[tuple[int, int]], int]:
    """[(text_len, n_visual)] per visual run (the text since the previous run), and the tail."""
    runs, i, text = [], 0, 0
    while i < len(types):
        j = i
        while j < len(types) and (types[j] == 2) == (types[i] == 2):
            j += 1
        if types[i] == 2:
            runs.append((text, j - i))
            text = 0
        else:
            text = j - i
        i = j
    return runs, text


@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (64, 64)], ids=["2x3", "3x2", "2x2"])
def test_group_positions_match_get_rope_index(hf, mlx_model, hw):
    model, processor = hf
    out = hf_video_prompt(processor, frames_for(6, hw), 2.0)  # 3 slots
    grid = (hw[0] // 32, hw[1] // 32)
    theirs, delta = model.model.get_rope_index(out["input_ids"], out["mm_token_type_ids"],
                                               video_grid_thw=out["video_grid_thw"])
    theirs = theirs[:, 0].numpy()
    runs, tail = split_groups(out["mm_token_type_ids"][0].tolist())
    assert [n for _, n in runs] == [grid[0] * grid[1]] * 3
    pieces, start, offset = [], 0, 0
    for text_len, _ in runs:  # group after group
        group = qwen3_group_positions(start, text_len, grid)
        np.testing.assert_array_equal(group, theirs[:, offset:offset + group.shape[1]])
        pieces.append(group)
        offset += group.shape[1]
        start = next_after(group)
        assert start == group[0, -1] + max(grid)
    pieces.append(text_positions(start, tail))
    ours = np.concatenate(pieces, axis=1)
    np.testing.assert_array_equal(ours, theirs)
    assert int(delta) == next_after(ours) - ours.shape[1]
    # mlx-vlm's get_rope_index agrees on the same ids
    stock, _ = mlx_model.language_model.get_rope_index(mx.array(out["input_ids"].numpy()),
                                                       video_grid_thw=mx.array(out["video_grid_thw"].numpy()))
    np.testing.assert_array_equal(np.array(stock)[:, 0], ours)


# ----- 3. one forward in each backend --------------------------------------------------------------
def test_mlx_vlm_and_transformers_agree_one_shot(hf, mlx_model):
    model, processor = hf
    out = hf_video_prompt(processor, frames_for(6), 2.0)
    ids, grid = out["input_ids"], out["video_grid_thw"]
    theirs, _ = model.model.get_rope_index(ids, out["mm_token_type_ids"], video_grid_thw=grid)
    with torch.no_grad():
        ref = model(**out, use_cache=False).logits[0].numpy()
        given = model(**out, position_ids=theirs, use_cache=False).logits[0].numpy()
        flat = model(**out, position_ids=theirs[:1].expand(3, -1, -1), use_cache=False).logits[0].numpy()
    np.testing.assert_array_equal(given, ref)
    mlx_model.language_model._position_ids = mlx_model.language_model._rope_deltas = None
    mine = mlx_model(mx.array(ids.numpy()), pixel_values_videos=mx.array(out["pixel_values_videos"].numpy()),
                     video_grid_thw=mx.array(grid.numpy()))
    np.testing.assert_allclose(np.array(mine.logits[0]), ref, atol=TOL, rtol=0)
    assert np.abs(flat - ref).max() > 100 * TOL  # the 3-D positions matter at this tolerance
    visual = model.model.visual
    saved, visual.deepstack_visual_indexes = visual.deepstack_visual_indexes, []
    try:
        with torch.no_grad():
            plain = model(**out, use_cache=False).logits[0].numpy()
    finally:
        visual.deepstack_visual_indexes = saved
    assert np.abs(plain - ref).max() > 100 * TOL  # deepstack (blocks 0 and 1) matters too
