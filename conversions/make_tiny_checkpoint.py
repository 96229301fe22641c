"""Build a tiny random checkpoint in the published hub layout, offline (about 5 s, a few MB).

    python conversions/make_tiny_checkpoint.py {qwen2_5_vl,qwen2_vl,llava_onevision,qwen3_vl} OUT_DIR \
        [--dtype float32|bfloat16] [--seed N]

Configs, tokenizer and processor files come from infinipot_mlx.hub.checkpoints; the random weights
come from transformers (the model built from the config, seeded, cast to one dtype, saved as
safetensors with the hub's key names, then reloaded to check that no key is missing).
Same seed -> byte-identical model.safetensors. The folder opens with mlx_vlm.load and with
transformers' from_pretrained and processors.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import infinipot_mlx  # noqa: F401  (BLAS preload; must precede any mlx import)
from infinipot_mlx.hub.checkpoints import (
    MODEL_TYPES,
    build_tokenizer,
    llava_onevision_config,
    qwen2_5_vl_config,
    qwen2_vl_config,
    qwen3_vl_config,
    write_hub_files,
)

VOCAB_SIZE = 512
DTYPES = ("float32", "bfloat16")
# Tiny Qwen2.5-VL: frames of 56x56 px .. 224x224 px (4 .. 64 visual tokens per 2-frame patch).
# "published": the limits of Qwen/Qwen2.5-VL-7B-Instruct (image 3,136 .. 12,845,056 px) and
# transformers' Qwen2-VL video defaults (128 .. 768 tokens per frame), as a real checkpoint.
QWEN_PROCESSORS = {
    "tiny": {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280,
             "video_min_pixels": 56 * 56, "video_max_pixels": 224 * 224},
    "published": {"min_pixels": 56 * 56, "max_pixels": 12_845_056,
                  "video_min_pixels": 128 * 28 * 28, "video_max_pixels": 768 * 28 * 28},
}
# Tiny Qwen3-VL (32 px per merged token): images 64x64 .. 32*32*1280 px; videos from 64x64 px
# up to 1,048,576 px over all frames (t * h * w). "published": Qwen/Qwen3-VL-8B-Instruct's limits.
QWEN3_PROCESSORS = {
    "tiny": {"min_pixels": 64 * 64, "max_pixels": 32 * 32 * 1280,
             "video_min_pixels": 64 * 64, "video_max_pixels": 1024 * 1024},
    "published": {"min_pixels": 65536, "max_pixels": 16777216,
                  "video_min_pixels": 4096, "video_max_pixels": 25165824},
}
# transformers classes of the model types not (yet) in specs.MODEL_TYPES


def tiny_config(model_type: str, tokenizer, dtype: str) -> dict:
    """The tiny sizes (see the module docstring of infinipot_mlx.hub.checkpoints for the layouts)."""
    if model_type == "qwen2_5_vl":
        return qwen2_5_vl_config(
            tokenizer, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=256, mrope_section=[4, 6, 6],
            vision_depth=2, vision_hidden_size=64, vision_num_heads=4,
            vision_intermediate_size=128, fullatt_block_indexes=[1], window_size=112,
            tokens_per_second=2, dtype=dtype)
    if model_type == "qwen2_vl":  # Qwen/Qwen2-VL-7B-Instruct layout; mlp_ratio 2 (published: 4)
        return qwen2_vl_config(
            tokenizer, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=256, mrope_section=[4, 6, 6],
            vision_depth=2, vision_embed_dim=64, vision_num_heads=4, vision_mlp_ratio=2, dtype=dtype)
    if model_type == "qwen3_vl":  # Qwen/Qwen3-VL-8B-Instruct layout; deepstack after blocks 0 and 1
        return qwen3_vl_config(
            tokenizer, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, intermediate_size=256, mrope_section=[6, 5, 5],
            vision_depth=3, vision_hidden_size=64, vision_num_heads=4, vision_intermediate_size=128,
            num_position_embeddings=64, deepstack_visual_indexes=[0, 1], dtype=dtype)
    return llava_onevision_config(
        tokenizer, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=256, vision_hidden_size=64,
        vision_num_layers=2, vision_num_heads=4, vision_intermediate_size=128,
        image_size=98, patch_size=14, max_grid=6, dtype=dtype)


def _model_class(model_type: str):
    import transformers

    from infinipot_mlx.contract.specs import MODEL_TYPES

    return getattr(transformers, MODEL_TYPES[model_type].hf_class)


def hub_key(model_type: str, key: str) -> str:
    """transformers 5 key -> the published key (LLaVA-OV's vision tower sits under vision_model)."""
    if model_type == "llava_onevision":
        for prefix in ("model.vision_tower.", "vision_tower."):
            if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
                return prefix + "vision_model." + key[len(prefix):]
    return key


def _save_weights(model, model_type: str, out_dir: Path, dtype: str) -> None:
    """Save the model in one dtype with hub key names as out_dir/model.safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    model.to(getattr(torch, dtype))  # one dtype for every sub-model (transformers keeps some in float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        state = load_file(str(Path(tmp) / "model.safetensors"))
    state = {hub_key(model_type, k): v.contiguous() for k, v in state.items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors writes 0600


def _check_reload(model_type: str, out_dir: Path) -> None:
    """Reload with transformers and fail on any missing or unexpected key."""
    _, info = _model_class(model_type).from_pretrained(str(out_dir), output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if bad:
        raise RuntimeError(f"the tiny {model_type} checkpoint in {out_dir} does not reload: {bad}")


def build_tiny_checkpoint(model_type: str, out_dir: str | Path, dtype: str = "float32",
                          seed: int = 0, processor: str = "tiny") -> Path:
    """Write a tiny random `model_type` checkpoint to out_dir (created; existing files replaced).

    processor: "tiny" frames, or "published" (the pixel limits of the real Qwen2.5-VL-7B, or of
        Qwen3-VL-8B for qwen3_vl).

    Returns:
        out_dir as a Path.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {MODEL_TYPES}.")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {DTYPES}.")
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out_dir)
    tokenizer = build_tokenizer(VOCAB_SIZE, model_type)
    config = tiny_config(model_type, tokenizer, dtype)
    limits = {"qwen2_5_vl": QWEN_PROCESSORS, "qwen2_vl": QWEN_PROCESSORS, "qwen3_vl": QWEN3_PROCESSORS}
    write_hub_files(out, model_type, tokenizer, config,
                    **(limits[model_type][processor] if model_type in limits else {}))
    hf_config = AutoConfig.from_pretrained(str(out))
    torch.manual_seed(seed)
    model = _model_class(model_type)._from_config(hf_config, dtype=torch.float32)
    _save_weights(model, model_type, out, dtype)
    _check_reload(model_type, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_type", choices=MODEL_TYPES)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete out_dir first if it exists")
    parser.add_argument("--processor", choices=tuple(QWEN_PROCESSORS), default="tiny",
                        help="Qwen pixel limits: tiny frames, or the published checkpoint's")
    args = parser.parse_args(argv)
    if args.force and args.out_dir.exists():
        shutil.rmtree(args.out_dir)
    out = build_tiny_checkpoint(args.model_type, args.out_dir, args.dtype, args.seed, args.processor)
    size = (out / "model.safetensors").stat().st_size / 1e6
    print(f"wrote {args.model_type} ({args.dtype}, seed {args.seed}) to {out}: {size:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
