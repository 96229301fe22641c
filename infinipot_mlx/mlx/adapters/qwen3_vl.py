"""Qwen3-VL on mlx-vlm's qwen3_vl model classes: per-block vision with DeepStack, slot text,
explicit interleaved M-RoPE, our cache.

mlx_vlm.load opens a Qwen/Qwen3-VL-8B-Instruct folder as mlx_vlm.models.qwen3_vl.Model. Its
vision tower returns the merged visual tokens and, for DeepStack, one more feature per listed
vision layer; the language model adds the k-th of those to the hidden states of the visual
tokens after decoder layer k. A block here is what the processor writes for its slots:
per slot "<t seconds><|vision_start|>", T visual tokens, "<|vision_end|>" (slot text,
stored with its slot), run in one forward with DeepStack applied to the block's visual
tokens exactly as a one-shot forward applies it to the whole video's. Positions come from
infinipot_mlx.contract.positions (qwen3_group_positions), never from mlx-vlm's position state.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary, k DeepStack layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .qwen2_5_vl import Qwen2_5_VLAdapter


@dataclass
class VisualBlock:
    """A block's vision output: tokens (S*T, E) and DeepStack features, k x (S*T, E)."""

    tokens: mx.array
    deepstack: list


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Embed frames and text, and run the LM with explicit positions (mlx-vlm's qwen3_vl.Model)."""

    language_module = "mlx_vlm.models.qwen3_vl.language"  # its interleaved M-RoPE (forward_attending)

    def encode_slots(self, frames: np.ndarray) -> VisualBlock:
        """Vision tower on one block. (n, H, W, 3) uint8 -> VisualBlock of S*T tokens."""
        tokens, deepstack = self.model.vision_tower(*self._vision_inputs(frames))
        return VisualBlock(tokens, list(deepstack))

    def splice_slot_text(self, visual: VisualBlock, texts: list[tuple[list[int], list[int]]]):
        """The block's sequence: per slot, its leading text ids, its T visual tokens, its
        trailing text ids. -> (embeds (1, L, E), forward keywords carrying DeepStack)."""
        T = visual.tokens.shape[0] // len(texts)
        parts, is_visual = [], []
        for s, (lead, trail) in enumerate(texts):
            parts += [self.embed_tokens(lead)[0], visual.tokens[s * T:(s + 1) * T], self.embed_tokens(trail)[0]]
            is_visual += [False] * len(lead) + [True] * T + [False] * len(trail)
        embeds = mx.concatenate([p for p in parts if p.shape[0]])[None]  # (1, L, E)
        return embeds, {"deepstack": (np.array(is_visual), visual.deepstack)}

    def forward(self, embeds: mx.array, positions: np.ndarray, cache, deepstack=None) -> mx.array:
        """Run the LM over new tokens, adding DeepStack features at the visual ones.

        embeds (1, L, E), positions (3, L); deepstack: (mask (L,) bool, k x (n_visual, E)).
        -> last-token logits (1, 1, V).
        """
        position_ids = mx.array(positions[:, None, :].astype(np.int32))  # (3, 1, L)
        extra = {}
        if deepstack is not None:
            mask, features = deepstack
            extra = dict(visual_pos_masks=mx.array(mask[None]), deepstack_visual_embeds=features)
        hidden = self.lm.model(None, inputs_embeds=embeds, cache=cache, position_ids=position_ids, **extra)
        return self._last_logits(hidden)
