"""Tiny checkpoints in the hub layout open with mlx_vlm.load and transformers, and agree.

Tier 3 (tiny checkpoints). The checkpoints are built once per session by conftest fixtures.
"""

import infinipot_mlx  # noqa: F401  (must precede any mlx import)

import json
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402  (a dev dependency: a missing torch must fail, not skip)
import transformers  # noqa: E402

MODEL_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration"}
PROCESSORS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "llava_onevision": "LlavaOnevisionProcessor"}
FIXTURES = {"qwen2_5_vl": "tiny_qwen_dir", "llava_onevision": "tiny_llava_dir"}
# (config key, token) pairs that must agree with the tokenizer.
TOKEN_KEYS = {
    "qwen2_5_vl": [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                   ("vision_start_token_id", "<|vision_start|>"),
                   ("vision_end_token_id", "<|vision_end|>"), ("vision_token_id", "<|vision_pad|>"),
                   ("eos_token_id", "<|im_end|>"), ("bos_token_id", "<|endoftext|>")],
    "llava_onevision": [("image_token_index", "<image>"), ("video_token_index", "<video>")],
}
VIDEO_PLACEHOLDER = {"qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
                     "llava_onevision": "<video>\n"}
TEXT = "Describe this video in detail. The red ball moves 42 times!"


@pytest.fixture(params=sorted(FIXTURES))
def tiny(request) -> tuple[str, Path]:
    """(model_type, checkpoint dir) for each family."""
    return request.param, request.getfixturevalue(FIXTURES[request.param])


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_qwen_config_is_flat_hub_layout(tiny_qwen_dir):
    config = read_config(tiny_qwen_dir)
    assert "text_config" not in config and config["hidden_size"] == 128
    assert config["vision_config"]["model_type"] == "qwen2_5_vl"
    assert config["vision_config"]["out_hidden_size"] == config["hidden_size"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert sum(config["rope_scaling"]["mrope_section"]) == head_dim // 2
    assert config["rope_scaling"]["type"] == "mrope"
    names = {p.name for p in tiny_qwen_dir.iterdir()}
    assert {"generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json", "chat_template.json",
            "model.safetensors"} <= names


def test_llava_config_is_nested_hub_layout(tiny_llava_dir):
    config = read_config(tiny_llava_dir)
    vision = config["vision_config"]
    assert config["text_config"]["model_type"] == "qwen2"
    assert vision["model_type"] == "siglip_vision_model" and not vision["vision_use_head"]
    assert (vision["image_size"] // vision["patch_size"]) % 2 == 1  # odd, like the real 27x27
    assert all(h % vision["image_size"] == 0 and w % vision["image_size"] == 0
               for h, w in config["image_grid_pinpoints"])
    from safetensors import safe_open

    with safe_open(str(tiny_llava_dir / "model.safetensors"), "np") as f:
        tower = [k for k in f.keys() if "vision_tower" in k]
    assert tower and all(".vision_tower.vision_model." in "." + k for k in tower)


def test_tokenizer_round_trips_and_ids_match_config(tiny):
    model_type, path = tiny
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    config = read_config(path)
    assert len(tok) == config.get("text_config", config)["vocab_size"] == 512
    assert tok.decode(tok(TEXT).input_ids) == TEXT
    for key, token in TOKEN_KEYS[model_type]:
        assert tok.convert_tokens_to_ids(token) == config[key], key
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_chat_template_renders_a_video_message(tiny):
    model_type, path = tiny
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert VIDEO_PLACEHOLDER[model_type] + "Why?<|im_end|>" in text
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    assert template == tok.chat_template


def test_transformers_loads_with_no_missing_keys(tiny):
    model_type, path = tiny
    cls = getattr(transformers, MODEL_CLASSES[model_type])
    model, info = cls.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_transformers_processor_opens(tiny):
    import torchvision  # noqa: F401  (a dev dependency: transformers 5 video processors need it)
    model_type, path = tiny
    processor = getattr(transformers, PROCESSORS[model_type]).from_pretrained(str(path))
    assert processor.tokenizer.eos_token == "<|im_end|>"


def test_processors_read_the_written_limits(tiny_qwen_dir, tiny_llava_dir):
    """mlx-vlm's processors and transformers' PIL image processors (no torchvision needed)
    read our preprocessor/video_preprocessor configs, not their own defaults."""
    from mlx_vlm import load
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    video = json.loads((tiny_qwen_dir / "video_preprocessor_config.json").read_text())
    _, processor = load(str(tiny_qwen_dir))
    vp = processor.video_processor
    assert (vp.min_pixels, vp.max_pixels) == (video["min_pixels"], video["max_pixels"])
    assert list(vp.image_mean) == video["image_mean"] and vp.temporal_patch_size == 2
    image = Qwen2VLImageProcessorPil.from_pretrained(str(tiny_qwen_dir))
    assert image.size.shortest_edge == 56 * 56 and list(image.image_mean) == video["image_mean"]
    _, processor = load(str(tiny_llava_dir))
    assert tuple(processor.video_processor.size) == (98, 98)
    image = LlavaOnevisionImageProcessorPil.from_pretrained(str(tiny_llava_dir))
    assert (image.size.height, image.size.width) == (98, 98) and tuple(image.image_mean) == (0.5,) * 3


def test_mlx_vlm_load_and_language_model_parity(tiny):
    """Same input_ids through both language models: float32 logits agree to ~1e-5."""
    import mlx.core as mx
    from mlx_vlm import load

    model_type, path = tiny
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ids = tok(TEXT).input_ids
    ref = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(str(path))
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor([ids])).logits[0].numpy()  # (L, V)
    model, processor = load(str(path))
    got = np.array(model.language_model(mx.array([ids])).logits[0])  # (L, V)
    assert got.shape == expected.shape == (len(ids), 512)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    assert processor.tokenizer.decode(ids) == TEXT


def test_bf16_checkpoint_is_all_bf16_and_loads(tiny_qwen_bf16_dir, tiny_qwen_dir):
    from safetensors import safe_open
    from mlx_vlm import load

    with safe_open(str(tiny_qwen_bf16_dir / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert read_config(tiny_qwen_bf16_dir)["torch_dtype"] == "bfloat16"
    load(str(tiny_qwen_bf16_dir))


def test_builder_is_deterministic_by_seed(build_tiny, tiny_qwen_dir, tmp_path):
    again = build_tiny("qwen2_5_vl", tmp_path / "again", "float32", 0)
    other = build_tiny("qwen2_5_vl", tmp_path / "other", "float32", 1)
    weights = (tiny_qwen_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tiny_qwen_dir / name).read_bytes()


def test_builder_rejects_bad_arguments(build_tiny, tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        build_tiny("llava", tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        build_tiny("qwen2_5_vl", tmp_path, dtype="float16")


def test_llava_video_forward_parity(tiny_llava_dir):
    """Same video pixels and ids through both LLaVA-OV models (siglip, projector, 2x pooling,
    image_newline): float32 logits agree to ~1e-5. 7x7 patches pool to 4x4 = 16 tokens/frame."""
    import mlx.core as mx
    from mlx_vlm import load

    path, frames = str(tiny_llava_dir), 3
    tok = transformers.AutoTokenizer.from_pretrained(path)
    video = tok.convert_tokens_to_ids("<video>")
    ids = (tok("<|im_start|>user\n").input_ids + [video] * (frames * 16 + 1)
           + tok("Why?<|im_end|>\n<|im_start|>assistant\n").input_ids)
    pixels = np.random.default_rng(0).standard_normal((1, frames, 3, 98, 98)).astype(np.float32)
    ref = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(path)
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor([ids]),
                       pixel_values_videos=torch.from_numpy(pixels)).logits[0].numpy()
    model, _ = load(path)
    got = np.array(model(mx.array([ids]), pixel_values_videos=mx.array(pixels)).logits[0])
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
