"""Write a trained organism as a checkpoint folder in the published Qwen2.5-VL hub layout.

The reverse of mlx-vlm's Qwen2.5-VL sanitize: vision_tower.* -> visual.*,
language_model.model.* -> model.*, language_model.lm_head.* -> lm_head.*, and the patch
embedding back to PyTorch's (out, in, t, h, w) layout, so mlx_vlm.load (and transformers)
open the folder like a hub download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..hub import checkpoints


def hub_name(name: str) -> str:
    """mlx-vlm parameter name -> the hub's (Qwen/Qwen2.5-VL-*-Instruct) name."""
    for ours, theirs in (("vision_tower.", "visual."), ("language_model.model.", "model."),
                         ("language_model.lm_head", "lm_head")):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise ValueError(f"unexpected parameter {name!r}")


def hub_weights(model, dtype=mx.float32) -> dict[str, mx.array]:
    """All parameters under hub names, patch embedding as (out, in, t, h, w)."""
    out = {}
    for name, value in tree_flatten(model.parameters()):
        if name.endswith("patch_embed.proj.weight"):  # MLX (out, t, h, w, in) -> PyTorch layout
            value = value.transpose(0, 4, 1, 2, 3)
        out[hub_name(name)] = value.astype(dtype)
    return out


def save_checkpoint(model, tokenizer, config: dict, out_dir: str | Path, fps: float = 2.0) -> Path:
    """Write the folder atomically (a sibling temp folder, then rename)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "model.safetensors"), hub_weights(model), metadata={"format": "pt"})
    checkpoints.write_hub_files(tmp, "qwen2_5_vl", tokenizer, config, fps=fps)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
