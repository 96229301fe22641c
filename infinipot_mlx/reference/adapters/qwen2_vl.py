"""Qwen2-VL on transformers' Qwen2VLForConditionalGeneration: per-block vision, explicit M-RoPE.

The mirror of infinipot_mlx/mlx/adapters/qwen2_vl.py. transformers' Qwen2-VL has the
layout of Qwen2.5-VL (model.model.visual returning the merged patches as pooler_output,
model.model.language_model a Qwen2VLTextModel taking inputs_embeds, position_ids (3, 1, L)
and our StreamCache, model.lm_head), so the adapter is Qwen2.5-VL's. Its vision tower has no
window attention. Positions come from infinipot_mlx.contract.positions (t = the slot's index for
Qwen2-VL), never from transformers' get_rope_index.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary.
"""

from __future__ import annotations

from .qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Embed frames and text, and run the LM with explicit positions (Qwen2VLForConditionalGeneration)."""

    def video_close_embeds(self) -> None:
        """Qwen2-VL puts nothing after a video but its <|vision_end|> text token."""
        return None
