"""A random vision-language model built in memory from a hub-layout config, and synthetic frames.

No files and no network: the config dict is the one the hub writers write for the model
type (checkpoints.qwen2_5_vl_config by default; qwen2_vl_config, qwen3_vl_config,
llava_onevision_config), read by mlx-vlm's own ModelConfig.from_dict, and the model keeps
MLX's random initialisation (float32). The tokenizer is checkpoints.build_tokenizer's
byte-level BPE with the real special tokens, wrapped in transformers'
PreTrainedTokenizerFast (the API the session calls). Frames are moving coloured squares
over a drifting gradient with light noise, a pure function of (frame index, seed).

Sizes keep the real patch 14, spatial merge 2 and temporal patch 2 (2 sampled frames per
slot), so a 448x448 frame pair gives T = 16 x 16 = 256 visual tokens, as on the hub model.
Every model type gets the same token grid: Qwen3-VL's 32-px tokens see 512x512 frames
(frame_side), LLaVA-OneVision one frame per slot at image_size = frame_size (patch 14,
pooled 2x2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..hub import checkpoints
from ..contract.specs import MODEL_TYPES, ModelSpec

VOCAB = 512  # the fixtures' vocabulary; a real 152k-token LM head is not part of these timings


@dataclass(frozen=True)
class StreamSize:
    """Model and stream sizes of one benchmark preset (slots = 2 sampled frames)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vision_depth: int
    vision_hidden_size: int
    vision_num_heads: int
    vision_intermediate_size: int
    frame_size: int  # square frames, a multiple of 28 (Qwen2.5-VL's pixels per token)
    capacity_slots: int  # visual capacity in slots (T tokens each)
    block_slots: int  # slots prefilled per block (InfiniPotConfig.block_slots)
    answer_tokens: int  # tokens decoded per question

    def describe(self) -> dict:
        return asdict(self)


SIZES = {
    # head_dim 64 everywhere: mlx-vlm's 8-bit KV quantization works in groups of 64.
    "tiny": StreamSize(128, 2, 2, 1, 256, 1, 32, 2, 64, 112, 2, 1, 4),
    # Chosen so the six-method run takes minutes on 2 shared cores; see the JSON "size".
    "mid": StreamSize(512, 4, 8, 2, 1408, 4, 128, 4, 512, 448, 4, 1, 16),
}


def model_config(size: StreamSize, model_type: str = "qwen2_5_vl") -> tuple[dict, object]:
    """(hub-layout config.json dict, tokenizers.Tokenizer) of a `model_type` at a preset's sizes."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {tuple(MODEL_TYPES)}")
    tok = checkpoints.build_tokenizer(VOCAB, model_type)
    text = dict(hidden_size=size.hidden_size, num_hidden_layers=size.num_hidden_layers,
                num_attention_heads=size.num_attention_heads, num_key_value_heads=size.num_key_value_heads,
                intermediate_size=size.intermediate_size)
    if model_type == "qwen2_vl":  # vision MLP as embed_dim x mlp_ratio
        return checkpoints.qwen2_vl_config(
            tok, **text, vision_depth=size.vision_depth, vision_embed_dim=size.vision_hidden_size,
            vision_num_heads=size.vision_num_heads,
            vision_mlp_ratio=size.vision_intermediate_size // size.vision_hidden_size), tok
    if model_type == "qwen3_vl":  # position grid of the frames' 16-px patches; DeepStack on
        patches = size.frame_size // 28 * 2  # the first blocks (as many as the LM can take, up to 3)
        return checkpoints.qwen3_vl_config(
            tok, **text, head_dim=size.hidden_size // size.num_attention_heads,
            vision_depth=size.vision_depth, vision_hidden_size=size.vision_hidden_size,
            vision_num_heads=size.vision_num_heads, vision_intermediate_size=size.vision_intermediate_size,
            num_position_embeddings=patches * patches,
            deepstack_visual_indexes=list(range(min(size.vision_depth, size.num_hidden_layers, 3)))), tok
    if model_type == "llava_onevision":  # one frame per slot at image_size = frame_size
        return checkpoints.llava_onevision_config(
            tok, **text, vision_hidden_size=size.vision_hidden_size, vision_num_layers=size.vision_depth,
            vision_num_heads=size.vision_num_heads, vision_intermediate_size=size.vision_intermediate_size,
            image_size=size.frame_size, patch_size=14), tok
    return checkpoints.qwen2_5_vl_config(
        tok, **text, vision_depth=size.vision_depth, vision_hidden_size=size.vision_hidden_size,
        vision_num_heads=size.vision_num_heads, vision_intermediate_size=size.vision_intermediate_size), tok


def build_model(size: StreamSize, seed: int = 0, model_type: str = "qwen2_5_vl"):
    """(model, tokenizer, spec, config dict): a random mlx-vlm `model_type`, float32."""
    import mlx.core as mx
    from mlx_vlm.utils import get_model_and_args, update_module_configs
    from transformers import PreTrainedTokenizerFast

    config, tok = model_config(size, model_type)
    module, _ = get_model_and_args(config=dict(config))
    sections = {**config, "text_config": config.get("text_config") or config}  # flat Qwen2(.5)-VL text
    model_config_ = update_module_configs(module.ModelConfig.from_dict(dict(config)), module, sections,
                                          ["text", "vision"])
    mx.random.seed(seed)
    model = module.Model(model_config_)
    model.eval()
    mx.eval(model.parameters())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    return model, tokenizer, MODEL_TYPES[model_type].read_spec(config, {}), config


def weights_bytes(model) -> int:
    """Bytes of the model's parameters."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def moving_frames(start: int, n: int, side: int, seed: int = 0) -> np.ndarray:
    """Frames start .. start+n-1 of a synthetic video: (n, side, side, 3) uint8.

    Three squares move at constant speeds (wrapping) over a slowly drifting gradient.
    """
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side  # (side, side)
    out = np.empty((n, side, side, 3), np.uint8)
    square = max(side // 6, 2)
    speeds = np.array([[3, 1], [-2, 4], [5, -3]]) * max(side // 112, 1)  # pixels per frame
    colors = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 240]], np.uint8)
    for i in range(n):
        t = start + i
        drift = 0.002 * t
        frame = np.stack([ys + drift, xs, 1 - ys], -1) % 1.0 * 160 + 40  # (side, side, 3)
        for (dy, dx), color in zip(speeds, colors):
            y0, x0 = (dy * t) % (side - square), (dx * t) % (side - square)
            frame[y0 : y0 + square, x0 : x0 + square] = color
        noise = np.random.default_rng((seed, t)).integers(-6, 7, frame.shape)
        out[i] = np.clip(frame + noise, 0, 255).astype(np.uint8)
    return out


def frame_side(spec: ModelSpec, size: StreamSize) -> int:
    """Side in pixels of the square frames the preset streams to `spec`'s model: its fixed frame
    size (LLaVA-OneVision), else the preset's token grid (frame_size / 28) at its pixels per token."""
    if spec.frame_size is not None:
        return spec.frame_size[0]
    return size.frame_size // 28 * spec.pixels_per_token


def tokens_per_slot(spec: ModelSpec, size: StreamSize) -> int:
    """T for the preset's frames."""
    side = frame_side(spec, size)
    return spec.tokens_per_slot((side, side))
