"""LLaVA-OneVision on transformers' model classes: per-block SigLIP, pooled video tokens, 1-D RoPE.

The mirror of infinipot_mlx/adapters/llava_onevision.py. Vision goes through transformers'
own `get_video_features` (SigLIP, projector, 2x2 bilinear pooling with ceil), whose one
`image_newline` per call is dropped per block and given back once after the video segment
by `video_close_embeds`. The inner Qwen2Model is called with inputs_embeds, explicit
position_ids (1, L) and our StreamCache as its cache argument (`cache_keyword`);
`place_next` records the positions in the cache for the `compact` policy, whose key
re-rotation (`key_rotation`) uses the model's own rotary embedding (Qwen2: rotate-half,
rope_theta).

Notation: n frames (one slot each), T tokens per frame, L new tokens, E hidden size,
V vocabulary, H KV heads, D head dim.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.qwen2.modeling_qwen2 import rotate_half

from ...errors import UserError
from ...contract.pixels import siglip_frames
from ...contract.specs import ModelSpec
from . import cache_keyword, token_array
from .attention import attention_mass, eager_attention


class KeyRotation:
    """R(delta) per cached slot with the model's own rotary embedding."""

    def __init__(self, rotary_emb: torch.nn.Module):
        rope_type = getattr(rotary_emb, "rope_type", "default")
        if rope_type not in ("default", "linear") or getattr(rotary_emb, "attention_scaling", 1.0) != 1.0:
            raise UserError(f"the compact position policy supports plain RoPE only, not {rope_type!r}; "
                             "use position_policy='absolute'")
        self.rotary_emb = rotary_emb

    @torch.no_grad()
    def __call__(self, keys: torch.Tensor, delta: np.ndarray) -> torch.Tensor:
        """keys (1, H, n, D) at positions p -> keys at p + delta; delta (H, n) ints.

        Computed in float32 and rounded once to the keys' dtype (bfloat16 keys would
        otherwise be rounded at every step of the rotation)."""
        delta = torch.from_numpy(np.asarray(delta, np.int64)).to(keys.device)  # (H, n)
        wide = keys.float()
        cos, sin = self.rotary_emb(wide, delta)  # (H, n, D) each, float32
        return (wide * cos[None] + rotate_half(wide) * sin[None]).to(keys.dtype)


class LlavaOnevisionAdapter:
    """Embed frames and text, and run the LM with explicit 1-D positions."""

    def __init__(self, model, tokenizer, spec: ModelSpec):
        self.model = model  # LlavaOnevisionForConditionalGeneration
        self.tokenizer = tokenizer
        self.spec = spec
        self.lm = model.model.language_model  # Qwen2Model
        self.device = next(model.parameters()).device
        self.cache_keyword = cache_keyword(self.lm)  # "cache" (transformers >= 5.24) or "past_key_values"

    @torch.no_grad()
    def encode_slots(self, frames: np.ndarray) -> torch.Tensor:
        """Vision tower, projector and pooling on one block. (n, S, S, 3) uint8 -> (n*T, E)."""
        image_size = self.model.config.vision_config.image_size
        pixels = siglip_frames(frames, self.spec.image_mean, self.spec.image_std, image_size)
        dtype = self.model.model.multi_modal_projector.linear_1.weight.dtype
        pixels = torch.from_numpy(pixels).to(self.device, dtype)[None]  # (1, n, C, S, S)
        features = self.model.get_video_features(pixel_values_videos=pixels).pooler_output  # (1, n*T+1, E)
        n_tokens = len(frames) * self.spec.tokens_per_slot(self.spec.frame_size)
        return features[0, :n_tokens]  # drop this call's image_newline (video_close_embeds has it)

    @torch.no_grad()
    def video_close_embeds(self) -> torch.Tensor:
        """(1, 1, E) image_newline, placed once after a video segment."""
        return self.model.model.image_newline[None, None].to(self.lm.embed_tokens.weight.dtype)

    @torch.no_grad()
    def embed_tokens(self, ids) -> torch.Tensor:
        """Token ids (a list, or a tensor of them) -> (1, L, E) embeddings."""
        return self.lm.embed_tokens(token_array(ids, self.device))

    def key_rotation(self) -> KeyRotation:
        """The RoPE rotation the cache applies to move stored keys (compact policy)."""
        return KeyRotation(self.lm.rotary_emb)

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, positions: np.ndarray, cache) -> torch.Tensor:
        """Run the LM over new tokens. embeds (1, L, E), positions (L,) -> last-token logits (1, 1, V)."""
        return self._last_logits(self._run(embeds, positions, cache))

    @torch.no_grad()
    def forward_attending(self, embeds: torch.Tensor, positions: np.ndarray, cache) -> tuple[torch.Tensor, list]:
        """forward(), and the last token's attention over the cache: per layer (H_kv, n_cached)
        probability mass summed over each KV head's query heads (transformers' eager attention)."""
        with eager_attention(self.lm):
            out = self._run(embeds, positions, cache, output_attentions=True)
        return self._last_logits(out), [attention_mass(a[0, :, -1], self.spec.kv_heads) for a in out.attentions]

    def _run(self, embeds: torch.Tensor, positions: np.ndarray, cache, **kwargs):
        positions = np.asarray(positions)
        cache.place_next(positions)  # rows remember their positions (compact policy)
        position_ids = torch.from_numpy(positions[None].astype(np.int64)).to(self.device)  # (1, L)
        if embeds.ndim == 2:
            embeds = embeds[None]  # (1, L, E)
        return self.lm(inputs_embeds=embeds.to(self.lm.embed_tokens.weight.dtype), position_ids=position_ids,
                       use_cache=True, **{self.cache_keyword: cache}, **kwargs)

    def _last_logits(self, out) -> torch.Tensor:
        return self.model.lm_head(out.last_hidden_state[:, -1:])  # only the last is used: (1, 1, V)
