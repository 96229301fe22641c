"""Hub-layout writers for Qwen2.5-VL, Qwen2-VL, Qwen3-VL and LLaVA-OneVision checkpoints (configs,
tokenizer, processors).

Writes folders laid out like Qwen/Qwen2.5-VL-7B-Instruct and llava-hf/llava-onevision-qwen2-7b-ov-hf
so that both mlx_vlm.load and transformers' from_pretrained / processors open them offline.
Sizes are arguments, so the same writers serve the tiny test checkpoints
(conversions/make_tiny_checkpoint.py) and small trained models. Weights are written elsewhere
(this module imports neither torch nor mlx).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from ..contract.specs import MODEL_TYPES as _REGISTRY
from .tokenizer import (
    CHAT_TEMPLATES,
    build_tokenizer,
    special_token_ids,
    tokenizer_config,
)

__all__ = [
    "MODEL_TYPES", "build_tokenizer", "generation_config", "llava_onevision_config",
    "qwen2_5_vl_config", "qwen2_vl_config", "qwen3_vl_config", "special_token_ids", "write_hub_files",
    "write_json", "write_processor_configs", "write_tokenizer_files",
]

MODEL_TYPES = tuple(_REGISTRY)  # the supported model types (specs.MODEL_TYPES)
# What these writers can lay out: the supported types plus those not (yet) in specs.MODEL_TYPES.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]


def write_json(path: str | Path, obj: dict) -> None:
    """Write `obj` as indented, key-sorted JSON (stable bytes)."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {MODEL_TYPES}.")


def write_tokenizer_files(out_dir: str | Path, tokenizer: Tokenizer, model_type: str) -> None:
    """Write tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, chat_template.json."""
    _check_model_type(model_type)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer.model.save(str(out))  # vocab.json + merges.txt, as on the hub
    config = tokenizer_config(tokenizer, model_type)
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATES[model_type]})
    special = {"eos_token": config["eos_token"], "pad_token": config["pad_token"],
               "additional_special_tokens": config["additional_special_tokens"]}
    write_json(out / "special_tokens_map.json", special)


def _token_id(ids: dict[str, int], token: str) -> int:
    if token not in ids:
        raise ValueError(f"the tokenizer has no {token!r} token; build it with build_tokenizer().")
    return ids[token]


def _qwen_vision_config(depth: int, hidden_size: int, num_heads: int, intermediate_size: int,
                       out_hidden_size: int, window_size: int, fullatt_block_indexes: list[int] | None,
                       tokens_per_second: int) -> dict:
    """vision_config of Qwen2.5-VL; model_type "qwen2_5_vl" as on the hub."""
    return {
        "model_type": "qwen2_5_vl",
        "depth": depth,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_heads": num_heads,
        "in_chans": 3,
        "out_hidden_size": out_hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": window_size,
        "fullatt_block_indexes": list(fullatt_block_indexes or [depth - 1]),
        "tokens_per_second": tokens_per_second,
        "temporal_patch_size": 2,
    }


def qwen2_5_vl_config(
    tokenizer: Tokenizer, *, hidden_size: int = 128, num_hidden_layers: int = 2,
    num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 256,
    mrope_section: list[int] | None = None, rope_theta: float = 1000000.0,
    vision_depth: int = 2, vision_hidden_size: int = 64, vision_num_heads: int = 4,
    vision_intermediate_size: int = 128, fullatt_block_indexes: list[int] | None = None,
    window_size: int = 112, tokens_per_second: int = 2, dtype: str = "float32",
) -> dict:
    """config.json in the Qwen/Qwen2.5-VL-7B-Instruct layout (text params flat at the top level).

    Token ids come from `tokenizer`; mrope_section defaults to head_dim/2 split 1:1.5:1.5.
    """
    ids = special_token_ids(tokenizer)
    head_dim = hidden_size // num_attention_heads
    if mrope_section is None:
        t = head_dim // 8
        mrope_section = [t, (head_dim // 2 - t) // 2, head_dim // 2 - t - (head_dim // 2 - t) // 2]
    if sum(mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}.")
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": _token_id(ids, "<|endoftext|>"),
        "eos_token_id": _token_id(ids, "<|im_end|>"),
        "vision_start_token_id": _token_id(ids, "<|vision_start|>"),
        "vision_end_token_id": _token_id(ids, "<|vision_end|>"),
        "vision_token_id": _token_id(ids, "<|vision_pad|>"),
        "image_token_id": _token_id(ids, "<|image_pad|>"),
        "video_token_id": _token_id(ids, "<|video_pad|>"),
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 128000,
        "max_window_layers": num_hidden_layers,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": rope_theta,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": _qwen_vision_config(
            vision_depth, vision_hidden_size, vision_num_heads, vision_intermediate_size,
            hidden_size, window_size, fullatt_block_indexes, tokens_per_second),
        "rope_scaling": {"type": "mrope", "mrope_section": list(mrope_section)},
        "vocab_size": tokenizer.get_vocab_size(),
    }


def qwen2_vl_config(
    tokenizer: Tokenizer, *, hidden_size: int = 128, num_hidden_layers: int = 2,
    num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 256,
    mrope_section: list[int] | None = None, rope_theta: float = 1000000.0,
    vision_depth: int = 2, vision_embed_dim: int = 64, vision_num_heads: int = 4,
    vision_mlp_ratio: int = 2, dtype: str = "float32",
) -> dict:
    """config.json in the Qwen/Qwen2-VL-7B-Instruct layout: Qwen2.5-VL's flat text keys and
    token ids, max_position_embeddings 32768, and the Qwen2-VL vision_config (embed_dim, depth,
    num_heads, mlp_ratio, in_chans; its hidden_size is the language model's, the merger output).
    """
    config = qwen2_5_vl_config(
        tokenizer, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size, mrope_section=mrope_section, rope_theta=rope_theta,
        dtype=dtype)
    vision = {"depth": vision_depth, "embed_dim": vision_embed_dim, "mlp_ratio": vision_mlp_ratio,
              "num_heads": vision_num_heads, "in_chans": 3, "hidden_size": hidden_size,
              "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
              "temporal_patch_size": 2}
    return {**config, "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "max_position_embeddings": 32768, "vision_config": vision}


def qwen3_vl_config(
    tokenizer: Tokenizer, *, hidden_size: int = 128, num_hidden_layers: int = 2,
    num_attention_heads: int = 4, num_key_value_heads: int = 2, head_dim: int = 32,
    intermediate_size: int = 256, mrope_section: list[int] | None = None,
    rope_theta: float = 5000000, vision_depth: int = 3, vision_hidden_size: int = 64,
    vision_num_heads: int = 4, vision_intermediate_size: int = 128,
    num_position_embeddings: int = 64, deepstack_visual_indexes: list[int] | None = None,
    tie_word_embeddings: bool = False, dtype: str = "float32",
) -> dict:
    """config.json in the Qwen/Qwen3-VL-8B-Instruct layout (written without network access).

    Nested text_config ("qwen3_vl_text": explicit head_dim, rope_scaling with an interleaved
    mrope_section, rope_theta 5e6) and vision_config (model_type "qwen3_vl" as published;
    transformers renames it "qwen3_vl_vision"), token ids at the top level. mrope_section
    defaults to head_dim/2 split 24:20:20 (the published [24, 20, 20] for head_dim 128).
    num_position_embeddings must be a square (the learned grid is bilinearly resampled).
    tie_word_embeddings (published: false for 8B) is written at the top level, which
    transformers reads, and in text_config, which mlx-vlm reads.
    """
    ids = special_token_ids(tokenizer)
    half = head_dim // 2
    if mrope_section is None:
        h = half * 20 // 64
        mrope_section = [half - 2 * h, h, h]
    if sum(mrope_section) != half:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {half}.")
    side = round(num_position_embeddings ** 0.5)
    if side * side != num_position_embeddings or side < 2:
        raise ValueError(f"num_position_embeddings {num_position_embeddings} must be a square >= 4.")
    if deepstack_visual_indexes is None:
        deepstack_visual_indexes = list(range(min(vision_depth - 1, 3)))
    text = {
        "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": _token_id(ids, "<|endoftext|>"), "eos_token_id": _token_id(ids, "<|im_end|>"),
        "dtype": dtype, "head_dim": head_dim, "hidden_act": "silu", "hidden_size": hidden_size,
        "initializer_range": 0.02, "intermediate_size": intermediate_size,
        "max_position_embeddings": 262144, "model_type": "qwen3_vl_text",
        "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads, "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": list(mrope_section),
                         "rope_type": "default"},
        "rope_theta": rope_theta, "tie_word_embeddings": tie_word_embeddings, "use_cache": True,
        "vocab_size": tokenizer.get_vocab_size(),
    }
    vision = {
        "deepstack_visual_indexes": list(deepstack_visual_indexes), "depth": vision_depth,
        "hidden_act": "gelu_pytorch_tanh", "hidden_size": vision_hidden_size, "in_channels": 3,
        "initializer_range": 0.02, "intermediate_size": vision_intermediate_size,
        "model_type": "qwen3_vl", "num_heads": vision_num_heads,
        "num_position_embeddings": num_position_embeddings, "out_hidden_size": hidden_size,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
    }
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": _token_id(ids, "<|image_pad|>"),
        "model_type": "qwen3_vl", "text_config": text, "tie_word_embeddings": tie_word_embeddings,
        "video_token_id": _token_id(ids, "<|video_pad|>"), "vision_config": vision,
        "vision_end_token_id": _token_id(ids, "<|vision_end|>"),
        "vision_start_token_id": _token_id(ids, "<|vision_start|>"),
    }


def _qwen2_text_config(ids: dict[str, int], vocab_size: int, hidden_size: int,
                      num_hidden_layers: int, num_attention_heads: int, num_key_value_heads: int,
                      intermediate_size: int, rope_theta: float, dtype: str) -> dict:
    """text_config of LLaVA-OV: a Qwen2ForCausalLM (llava-hf's nested layout)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": _token_id(ids, "<|endoftext|>"),
        "eos_token_id": _token_id(ids, "<|im_end|>"),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 32768,
        "max_window_layers": num_hidden_layers,
        "model_type": "qwen2",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": rope_theta,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def llava_onevision_config(
    tokenizer: Tokenizer, *, hidden_size: int = 128, num_hidden_layers: int = 2,
    num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 256,
    rope_theta: float = 1000000.0, vision_hidden_size: int = 64, vision_num_layers: int = 2,
    vision_num_heads: int = 4, vision_intermediate_size: int = 128, image_size: int = 98,
    patch_size: int = 14, max_grid: int = 6, dtype: str = "float32",
) -> dict:
    """config.json in the llava-hf/llava-onevision-qwen2-7b-ov-hf layout (nested text/vision).

    image_grid_pinpoints are all (i*image_size, j*image_size) for 1 <= i, j <= max_grid,
    like the hub's multiples of 384 up to 2304.
    """
    ids = special_token_ids(tokenizer)
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
    pinpoints = [[i * image_size, j * image_size]
                 for i in range(1, max_grid + 1) for j in range(1, max_grid + 1)]
    text_config = _qwen2_text_config(ids, tokenizer.get_vocab_size(), hidden_size,
                                     num_hidden_layers, num_attention_heads, num_key_value_heads,
                                     intermediate_size, rope_theta, dtype)
    vision_config = {
        "hidden_size": vision_hidden_size,
        "image_size": image_size,
        "intermediate_size": vision_intermediate_size,
        "model_type": "siglip_vision_model",
        "num_attention_heads": vision_num_heads,
        "num_hidden_layers": vision_num_layers,
        "patch_size": patch_size,
        "vision_use_head": False,
    }
    return {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "image_grid_pinpoints": pinpoints,
        "image_token_index": _token_id(ids, "<image>"),
        "video_token_index": _token_id(ids, "<video>"),
        "model_type": "llava_onevision",
        "projector_hidden_act": "gelu",
        "text_config": text_config,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_image_newline_parameter": True,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": vision_config,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }


def generation_config(config: dict) -> dict:
    """generation_config.json: greedy by default (deterministic tests), eos/pad from the config."""
    text = config.get("text_config", config)
    eos = text["eos_token_id"]
    pad = text["bos_token_id"]  # <|endoftext|> in both families
    return {"bos_token_id": pad, "do_sample": False, "eos_token_id": [eos, pad], "pad_token_id": pad}


def _qwen_processor_configs(min_pixels: int, max_pixels: int, video_min_pixels: int,
                            video_max_pixels: int, fps: float,
                            processor_class: str = "Qwen2_5_VLProcessor") -> dict[str, dict]:
    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": CLIP_MEAN,
              "image_std": CLIP_STD, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "do_convert_rgb": True, "do_resize": True, "resample": 3,
              "processor_class": processor_class}
    image = {**common, "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": min_pixels,
             "max_pixels": max_pixels,
             "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    video = {**common, "video_processor_type": "Qwen2VLVideoProcessor",
             "min_pixels": video_min_pixels, "max_pixels": video_max_pixels,
             "size": {"shortest_edge": video_min_pixels, "longest_edge": video_max_pixels},
             "fps": fps, "do_sample_frames": False, "cap_pixels_per_frame": False}
    return {"preprocessor_config.json": image, "video_preprocessor_config.json": video,
            "processor_config.json": {"processor_class": processor_class}}


def _qwen3_processor_configs(min_pixels: int, max_pixels: int, video_min_pixels: int,
                             video_max_pixels: int, fps: float) -> dict[str, dict]:
    """Qwen/Qwen3-VL-8B-Instruct's processor files (written without network access): patch 16,
    SigLIP mean/std 0.5, pixel limits only in `size` (the video's counts all frames: t * h * w),
    the video processor samples frames itself (fps 2, 4 .. 768 frames)."""
    common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": SIGLIP_MEAN,
              "image_std": SIGLIP_STD, "processor_class": "Qwen3VLProcessor"}
    image = {**common, "image_processor_type": "Qwen2VLImageProcessorFast",
             "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    video = {**common, "video_processor_type": "Qwen3VLVideoProcessor",
             "size": {"shortest_edge": video_min_pixels, "longest_edge": video_max_pixels},
             "fps": fps, "min_frames": 4, "max_frames": 768, "do_sample_frames": True}
    return {"preprocessor_config.json": image, "video_preprocessor_config.json": video,
            "processor_config.json": {"processor_class": "Qwen3VLProcessor"}}


def _llava_processor_configs(config: dict) -> dict[str, dict]:
    vision = config["vision_config"]
    side = vision["image_size"]
    common = {"image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD, "do_rescale": True,
              "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
              "do_resize": True, "resample": 3, "size": {"height": side, "width": side},
              "processor_class": "LlavaOnevisionProcessor"}
    image = {**common, "image_processor_type": "LlavaOnevisionImageProcessor", "do_pad": True,
             "image_grid_pinpoints": config["image_grid_pinpoints"]}
    video = {**common, "video_processor_type": "LlavaOnevisionVideoProcessor",
             "do_sample_frames": False}
    n_patches = (side // vision["patch_size"]) ** 2
    processor = {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": n_patches,
                 "vision_feature_select_strategy": config["vision_feature_select_strategy"],
                 "vision_aspect_ratio": config["vision_aspect_ratio"]}
    return {"preprocessor_config.json": image, "video_preprocessor_config.json": video,
            "processor_config.json": processor}


def write_processor_configs(
    out_dir: str | Path, model_type: str, config: dict, *, min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280, video_min_pixels: int = 56 * 56,
    video_max_pixels: int = 28 * 28 * 768, fps: float = 2.0,
) -> None:
    """Write preprocessor_config.json, video_preprocessor_config.json and processor_config.json.

    Pixel limits apply to the Qwen models only (LLaVA-OV resizes to the vision image_size). Both the
    flat min/max_pixels and transformers 5's `size` dict are written so mlx-vlm and transformers
    read the same limits (mlx-vlm falls back to other defaults without video_preprocessor_config);
    Qwen3-VL's files have `size` only, and its video limits count all frames (t * h * w pixels).
    """
    _check_model_type(model_type)
    if model_type == "qwen3_vl":
        files = _qwen3_processor_configs(min_pixels, max_pixels, video_min_pixels, video_max_pixels, fps)
    elif model_type in ("qwen2_5_vl", "qwen2_vl"):
        files = _qwen_processor_configs(min_pixels, max_pixels, video_min_pixels, video_max_pixels, fps,
                                        "Qwen2VLProcessor" if model_type == "qwen2_vl" else "Qwen2_5_VLProcessor")
    else:
        files = _llava_processor_configs(config)
    for name, obj in files.items():
        write_json(Path(out_dir) / name, obj)


def write_hub_files(out_dir: str | Path, model_type: str, tokenizer: Tokenizer, config: dict,
                    **processor_kwargs) -> None:
    """Everything but the weights: config.json, generation_config.json, tokenizer, processors."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", generation_config(config))
    write_tokenizer_files(out, tokenizer, model_type)
    write_processor_configs(out, model_type, config, **processor_kwargs)
