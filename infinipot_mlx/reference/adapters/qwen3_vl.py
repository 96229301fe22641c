"""Qwen3-VL on transformers' Qwen3VLForConditionalGeneration: per-block vision with DeepStack,
slot text, explicit interleaved M-RoPE, our cache.

The mirror of infinipot_mlx/mlx/adapters/qwen3_vl.py. model.model.visual returns the merged
visual tokens (pooler_output) and the DeepStack features (deepstack_features); the text model
(Qwen3VLTextModel) takes inputs_embeds, position_ids (3, 1, L), our StreamCache, and
visual_pos_masks with deepstack_visual_embeds, which it adds to the visual tokens' hidden
states after its first decoder layers. Positions come from infinipot_mlx.contract.positions
(qwen3_group_positions), never from transformers' get_rope_index.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary, k DeepStack layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .qwen2_5_vl import Qwen2_5_VLAdapter


@dataclass
class VisualBlock:
    """A block's vision output: tokens (S*T, E) and DeepStack features, k x (S*T, E)."""

    tokens: torch.Tensor
    deepstack: list


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Embed frames and text, and run the LM with explicit positions (Qwen3VLForConditionalGeneration)."""

    @torch.no_grad()
    def encode_slots(self, frames: np.ndarray) -> VisualBlock:
        """Vision tower on one block. (n, H, W, 3) uint8 -> VisualBlock of S*T tokens."""
        out = self.model.model.visual(*self._vision_inputs(frames))
        return VisualBlock(out.pooler_output, list(out.deepstack_features))

    @torch.no_grad()
    def splice_slot_text(self, visual: VisualBlock, texts: list[tuple[list[int], list[int]]]):
        """The block's sequence: per slot, its leading text ids, its T visual tokens, its
        trailing text ids. -> (embeds (1, L, E), forward keywords carrying DeepStack)."""
        T = visual.tokens.shape[0] // len(texts)
        parts, is_visual = [], []
        for s, (lead, trail) in enumerate(texts):
            parts += [self.embed_tokens(lead)[0], visual.tokens[s * T:(s + 1) * T].to(self.lm.embed_tokens.weight.dtype),
                      self.embed_tokens(trail)[0]]
            is_visual += [False] * len(lead) + [True] * T + [False] * len(trail)
        embeds = torch.cat([p for p in parts if p.shape[0]])[None]  # (1, L, E)
        return embeds, {"deepstack": (np.array(is_visual), visual.deepstack)}

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, positions: np.ndarray, cache, deepstack=None) -> torch.Tensor:
        """Run the LM over new tokens, adding DeepStack features at the visual ones.

        embeds (1, L, E), positions (3, L); deepstack: (mask (L,) bool, k x (n_visual, E)).
        -> last-token logits (1, 1, V).
        """
        extra = {}
        if deepstack is not None:
            mask, features = deepstack
            extra = dict(visual_pos_masks=torch.from_numpy(mask[None]).to(self.device),
                         deepstack_visual_embeds=features)
        return self._last_logits(self._run(embeds, positions, cache, **extra))
