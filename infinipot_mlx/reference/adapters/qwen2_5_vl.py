"""Qwen2.5-VL on transformers' model classes: per-block vision, explicit M-RoPE, our cache.

The mirror of infinipot_mlx/adapters/qwen2_5_vl.py. The inner text model
(Qwen2_5_VLTextModel) is called with inputs_embeds, explicit position_ids (3, 1, L) and
our StreamCache as its cache argument (`cache`; `past_key_values` before transformers
5.24), so transformers' own position code (get_rope_index, rope_deltas, mm_token_type_ids)
is never used: every prefill and decode position comes from infinipot_mlx.contract.positions. The
causal mask is built by transformers from the cache: query offset = n_cached and
(kv_length, kv_offset) = (n_cached + L, 0), which makes every cached slot visible and the
L new tokens causal among themselves.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import UserError
from ...contract.pixels import qwen_patchify
from ...contract.specs import ModelSpec
from . import cache_keyword, token_array
from .attention import attention_mass, eager_attention


class Qwen2_5_VLAdapter:
    """Embed frames and text, and run the LM with explicit positions."""

    def __init__(self, model, tokenizer, spec: ModelSpec):
        self.model = model  # Qwen2_5_VLForConditionalGeneration
        self.tokenizer = tokenizer
        self.spec = spec
        self.lm = model.model.language_model  # Qwen2_5_VLTextModel
        self.device = next(model.parameters()).device
        self.cache_keyword = cache_keyword(self.lm)  # "cache" (transformers >= 5.24) or "past_key_values"

    @torch.no_grad()
    def encode_slots(self, frames: np.ndarray) -> torch.Tensor:
        """Vision tower on one block. (n, H, W, 3) uint8 -> (S*T, E) visual embeddings."""
        pixels, grid = self._vision_inputs(frames)
        return self.model.model.visual(pixels, grid_thw=grid).pooler_output  # (S*T, E), merged patches

    def _vision_inputs(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, H, W, 3) uint8 -> pixel rows (S*4T, C*tp*p*p) in the tower's dtype, grid (1, 3)."""
        vc = self.model.config.vision_config
        pixels, grid_thw = qwen_patchify(
            frames, self.spec.image_mean, self.spec.image_std,
            vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size,
        )
        pixels = torch.from_numpy(pixels).to(self.device, self.model.model.visual.dtype)
        return pixels, torch.tensor([grid_thw], dtype=torch.long, device=self.device)

    def video_close_embeds(self) -> None:
        """Qwen2.5-VL puts nothing after a video but its <|vision_end|> text token."""
        return None

    def key_rotation(self):
        """M-RoPE keys are not renumbered: Qwen2.5-VL streams under `absolute` positions."""
        raise UserError("the compact position policy needs a 1-D RoPE model (LLaVA-OneVision); "
                        f"{self.spec.model_type} uses M-RoPE, so use position_policy='absolute'")

    @torch.no_grad()
    def embed_tokens(self, ids) -> torch.Tensor:
        """Token ids (a list, or a tensor of them) -> (1, L, E) embeddings."""
        return self.lm.embed_tokens(token_array(ids, self.device))

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, positions: np.ndarray, cache) -> torch.Tensor:
        """Run the LM over new tokens. embeds (1, L, E), positions (3, L) -> last-token logits (1, 1, V)."""
        return self._last_logits(self._run(embeds, positions, cache))

    @torch.no_grad()
    def forward_attending(self, embeds: torch.Tensor, positions: np.ndarray, cache) -> tuple[torch.Tensor, list]:
        """forward(), and the last token's attention over the cache: per layer (H_kv, n_cached)
        probability mass summed over each KV head's query heads (transformers' eager attention)."""
        with eager_attention(self.lm):
            out = self._run(embeds, positions, cache, output_attentions=True)
        return self._last_logits(out), [attention_mass(a[0, :, -1], self.spec.kv_heads) for a in out.attentions]

    def _run(self, embeds: torch.Tensor, positions: np.ndarray, cache, **kwargs):
        position_ids = torch.from_numpy(positions[:, None, :].astype(np.int64)).to(self.device)  # (3, 1, L)
        if embeds.ndim == 2:
            embeds = embeds[None]  # (1, L, E)
        return self.lm(inputs_embeds=embeds.to(self.lm.embed_tokens.weight.dtype), position_ids=position_ids,
                       use_cache=True, **{self.cache_keyword: cache}, **kwargs)

    def _last_logits(self, out) -> torch.Tensor:
        return self.model.lm_head(out.last_hidden_state[:, -1:])  # only the last is used: (1, 1, V)
