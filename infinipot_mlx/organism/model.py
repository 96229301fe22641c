"""The organism's model: a tiny Qwen2.5-VL on mlx-vlm's classes, its prompts and checkpoint.

The prompt is the one StreamSession streams (specs.ChatPieces, the Qwen chat template):
system, "<|im_start|>user\\n<|vision_start|>", the video's S*T <|video_pad|> tokens,
"<|vision_end|>", then turns "question<|im_end|>\\n<|im_start|>assistant\\n" + answer +
"<|im_end|>\\n" (later turns reopen with "<|im_start|>user\\n"). Positions are the session's:
M-RoPE with absolute time (positions.mrope_video_positions, fps 2), text after the video at
max + 1. The model is trained with exactly these tokens and positions.

Notation: B videos, F frames, S = F / 2 slots, T = 9 tokens per slot, V = S * T video
tokens, L sequence length, E hidden size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_vlm.models.qwen2_5_vl.vision import apply_rotary_pos_emb_vision

from ..contract.specs import DEFAULT_SYSTEM
from ..hub import checkpoints
from ..hub.tokenizer import DEFAULT_CORPUS
from . import data
from .prompts import FPS, PIECES, Prompt, PromptBuilder, batch_arrays, pixel_rows, single_token
from .prompts import turn_mask as prompts_turn_mask

__all__ = ["FPS", "PIECES", "Prompt", "PromptBuilder", "single_token", "Batch", "make_batch",
           "batch_from_arrays", "pixels_for", "hidden_states", "logits_at", "loss_fn"]

SIZES = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, vision_depth=2, vision_hidden_size=64, vision_num_heads=4,
             vision_intermediate_size=192)
VOCAB_SIZE = 512


def corpus() -> list[str]:
    """Tokenizer training text: every prompt piece, question and answer word, many times."""
    lines = [PIECES.system.format(system=DEFAULT_SYSTEM), *DEFAULT_CORPUS]
    for template in data.QUESTIONS.values():
        lines += [template.format(colour=c) for c in data.COLOURS]
    return lines * 4 + list(data.ANSWER_WORDS) * 50


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE over corpus(); every answer word must be one token."""
    tok = checkpoints.build_tokenizer(vocab_size, "qwen2_5_vl", corpus())
    long = [w for w in data.ANSWER_WORDS if len(tok.encode(w).ids) != 1]
    if long:
        raise ValueError(f"answer words {long} are not single tokens; raise vocab_size")
    return tok


def make_config(tokenizer, sizes: dict | None = None) -> dict:
    """config.json (hub layout) with tied embeddings, for SIZES overridden by `sizes`."""
    config = checkpoints.qwen2_5_vl_config(tokenizer, **{**SIZES, **(sizes or {})})
    config["tie_word_embeddings"] = True
    return config


def build_model(config: dict):
    """mlx_vlm's Qwen2.5-VL Model from a hub config dict, as mlx_vlm.load builds it."""
    from mlx_vlm.models import qwen2_5_vl
    from mlx_vlm.utils import update_module_configs

    config = copy.deepcopy(config)
    config.setdefault("text_config", {})
    model_config = qwen2_5_vl.ModelConfig.from_dict(config)
    model_config = update_module_configs(model_config, qwen2_5_vl, config, ["text", "vision"])
    return qwen2_5_vl.Model(model_config)


def n_params(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def pixels_for(frames: np.ndarray, mean=checkpoints.CLIP_MEAN, std=checkpoints.CLIP_STD):
    """(B, F, H, W, 3) uint8 -> pixel rows (B*S*H/14*W/14, 1176), grid_thw (B, 3)."""
    pixels, grid = pixel_rows(frames, mean, std)
    return mx.array(pixels), mx.array(grid)


@dataclass
class Batch:
    """Model inputs and loss targets of B videos with the same frame count."""

    pixels: mx.array  # (B*S*36, 1176)
    grid_thw: mx.array  # (B, 3)
    ids: mx.array  # (B, L) right-padded
    pos: mx.array  # (3, B, L)
    t_idx: mx.array  # (B, A) positions that predict answer tokens
    t_ids: mx.array  # (B, A)
    t_w: mx.array  # (B, A) 1 for real targets, 0 for padding
    aux: mx.array  # (B, 3, V) per-video-token targets (colour or "no", cell, asked colour)
    aux_w: mx.array  # (B, V)
    q_idx: mx.array  # (B, Q) positions of the questions' colour tokens (Prompt.asked)
    q_ids: mx.array  # (B, Q) their targets
    q_w: mx.array  # (B, Q) 1 for real targets, 0 for padding
    video_at: int
    prompts: list[Prompt]
    mask: mx.array | str = "causal"  # or (B, 1, L, L) bool when turns are independent


def make_batch(prompts: list[Prompt], frames: np.ndarray, pad_id: int, no_id: int,
               event_weight: float = 1.0, background_weight: float = 0.2) -> Batch:
    """Pad prompts into arrays. frames (B, F, H, W, 3) uint8; no_id: the "no" token."""
    arrays = batch_arrays(prompts, frames, pad_id, no_id, event_weight, background_weight)
    return batch_from_arrays(arrays, prompts)


def batch_from_arrays(arrays: dict[str, np.ndarray], prompts: list[Prompt] | None = None) -> Batch:
    """A Batch of prompts.batch_arrays' numpy arrays (prompts: for evaluation, else [])."""
    names = ("pixels", "grid_thw", "ids", "pos", "t_idx", "t_ids", "t_w", "aux", "aux_w", "q_idx", "q_ids", "q_w")
    mask = mx.array(arrays["mask"]) if "mask" in arrays else "causal"
    return Batch(*(mx.array(arrays[k]) for k in names), int(arrays["video_at"]), prompts or [], mask)


def turn_mask(prompts: list[Prompt], L: int) -> mx.array | str:
    """Causal mask that also hides other independent turns; "causal" when there are none."""
    mask = prompts_turn_mask(prompts, L)
    return "causal" if mask is None else mx.array(mask)  # (B, 1, L, L)


def vision_features(vision_tower, pixels: mx.array, grid_thw: mx.array) -> mx.array:
    """The vision tower's output, computed with one batched attention over all slots.

    Equal to vision_tower(pixels, grid_thw) (tests check it) when one temporal slot's merged
    grid fits in one attention window, as for 84 x 84 frames: every block then attends
    within a slot, the window order is the raster order, and mlx-vlm's per-slot loop of
    attention calls can be one call. Training only; inference uses the module as is.
    (N patches, C*2*14*14) -> (N / 4, E).
    """
    vt, grids = vision_tower, np.array(grid_thw)  # (videos, 3) rows of (t, h, w) patches
    gh, gw = int(grids[0, 1]), int(grids[0, 2])
    window = vt.window_size // vt.patch_size  # window side in patches
    if (grids[:, 1:] != (gh, gw)).any() or max(gh, gw) > window:
        return vision_tower(pixels, grid_thw, output_hidden_states=False)
    slots, P = int(grids[:, 0].sum()), gh * gw  # P patches per slot
    rot = vt.rot_pos_emb(mx.array([[1, gh, gw]]))  # (P, rot_dim)
    x = vt.patch_embed(pixels)  # (slots*P, Ev)
    for blk in vt.blocks:
        a = blk.attn
        qkv = a.qkv(blk.norm1(x)).reshape(slots, P, 3, a.num_heads, -1)
        q, k, v = (qkv[:, :, i] for i in range(3))  # (slots, P, heads, Dv)
        q, k = apply_rotary_pos_emb_vision(q, rot), apply_rotary_pos_emb_vision(k, rot)
        o = mx.fast.scaled_dot_product_attention(
            q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), scale=a.scale)
        x = x + a.proj(o.transpose(0, 2, 1, 3).reshape(slots * P, -1))
        x = x + blk.mlp(blk.norm2(x))
    return vt.merger(x)


def hidden_states(model, batch: Batch, with_vision: bool = False):
    """Vision tower, video features spliced at video_at, LM body. -> (B, L, E).

    with_vision: also return the video features (B, V, E), the LM's input at video tokens.
    """
    at = batch.video_at
    vis = vision_features(model.vision_tower, batch.pixels, batch.grid_thw)  # (B*V, E)
    vis = vis.reshape(batch.ids.shape[0], -1, vis.shape[-1])  # (B, V, E)
    emb = model.language_model.model.embed_tokens(batch.ids)  # (B, L, E)
    emb = mx.concatenate([emb[:, :at], vis, emb[:, at + vis.shape[1]:]], axis=1)
    hidden = model.language_model.model(None, inputs_embeds=emb, mask=batch.mask, position_ids=batch.pos)
    return (hidden, vis) if with_vision else hidden


def logits_at(model, hidden: mx.array, idx: mx.array) -> mx.array:
    """Logits at sequence positions idx (B, A). -> (B, A, vocab)."""
    h = mx.take_along_axis(hidden, idx[..., None], axis=1)  # (B, A, E)
    return model.language_model.model.embed_tokens.as_linear(h)


def word_loss(model, states: mx.array, batch: Batch, rows: tuple[int, int]) -> mx.array:
    """Mean weighted -log p of each video token's words batch.aux[:, rows]. states (B, V, E)."""
    logp = nn.log_softmax(model.language_model.model.embed_tokens.as_linear(states), axis=-1)  # (B, V, vocab)
    targets = batch.aux[:, list(rows)].transpose(0, 2, 1)  # (B, V, 2)
    picked = mx.take_along_axis(logp, targets, axis=-1).mean(-1)  # (B, V)
    return -(picked * batch.aux_w).sum() / batch.aux_w.sum()


def loss_fn(model, batch: Batch, aux_weight: float = 0.5, input_aux_weight: float = 0.0,
            asked_weight: float = 0.0) -> mx.array:
    """Cross-entropy on answer tokens (word and <|im_end|>), plus the auxiliary losses.

    The auxiliary loss asks the LM output at each video token for that token's colour word
    ("no" if none) and cell word, half each: a dense signal that teaches colours and places
    early. Those outputs are never read at inference. The input auxiliary loss asks the video
    features themselves (read through the tied embedding) for the colour as a question says
    it (" red") and the cell word, so a video token enters the LM looking like the words
    that describe it, and a question's colour word can find it by attention from the first
    layer on. The asked loss asks the LM output at each colour a question names for the cell
    where that colour was shown, or "no": the binding "present" and "where" need, trained
    where it happens.
    """
    hidden, vis = hidden_states(model, batch, with_vision=True)
    ce = nn.losses.cross_entropy(logits_at(model, hidden, batch.t_idx), batch.t_ids, reduction="none")
    loss = (ce * batch.t_w).sum() / batch.t_w.sum()
    V = batch.aux.shape[-1]
    if aux_weight:
        loss = loss + aux_weight * word_loss(model, hidden[:, batch.video_at:batch.video_at + V], batch, (0, 1))
    if input_aux_weight:
        loss = loss + input_aux_weight * word_loss(model, vis, batch, (2, 1))
    if asked_weight and float(batch.q_w.sum()) > 0:
        ce = nn.losses.cross_entropy(logits_at(model, hidden, batch.q_idx), batch.q_ids, reduction="none")
        loss = loss + asked_weight * (ce * batch.q_w).sum() / batch.q_w.sum()
    return loss
