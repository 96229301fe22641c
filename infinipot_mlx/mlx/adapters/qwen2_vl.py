"""Qwen2-VL on mlx-vlm's qwen2_vl model classes: per-block vision, explicit M-RoPE, our cache.

mlx_vlm.load opens a Qwen/Qwen2-VL-7B-Instruct folder as mlx_vlm.models.qwen2_vl.Model:
a vision tower without window attention (every layer attends over the whole temporal slot)
and the same Qwen2 decoder as Qwen2.5-VL. The adapter is Qwen2.5-VL's (the same calls into
`vision_tower`, `language_model.model` and its layers) with qwen2_vl's own M-RoPE function in
forward_attending. Positions still come from infinipot_mlx.contract.positions: for Qwen2-VL the video's
time index is the slot itself (spec.slot_time False), never mlx-vlm's position state.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary.
"""

from __future__ import annotations


from .qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Embed frames and text, and run the LM with explicit positions (mlx-vlm's qwen2_vl.Model)."""

    language_module = "mlx_vlm.models.qwen2_vl.language"  # its M-RoPE (forward_attending)

    def video_close_embeds(self) -> None:
        """Qwen2-VL puts nothing after a video but its <|vision_end|> text token."""
        return None
