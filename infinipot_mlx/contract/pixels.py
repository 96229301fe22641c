"""One preprocessing path from RGB frames to vision-tower inputs, shared by both backends.

Feeding both backends the same pixel values is what makes parity exact (the
frameworks' own resizers differ). Frames are sized by smart_resize (here) and resized by video.py.

Notation: n = frames, H x W pixels, C = 3 channels, p = patch size, tp = temporal patch
size, m = spatial merge size.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from .specs import QWEN_VIDEO_MAX_PIXELS, QWEN_VIDEO_MIN_PIXELS


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = QWEN_VIDEO_MIN_PIXELS,
                 max_pixels: int = QWEN_VIDEO_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's smart_resize: (H, W) multiples of `factor`, H*W in [min_pixels, max_pixels].

    Same arithmetic as transformers' qwen2_vl smart_resize (round half to even included).
    """
    if min(height, width) <= 0:
        raise UserError(f"frame size {height}x{width} is empty; the source gives no picture.")
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"frame size {height}x{width} is too elongated (aspect ratio over 200).")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def normalize(frames: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (n, H, W, C) -> float32 (n, C, H, W), rescaled to [0, 1] then standardized."""
    x = frames.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def qwen_patchify(
    frames: np.ndarray, mean, std, patch: int = 14, temporal_patch: int = 2, merge: int = 2
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Qwen2-VL's video patch layout (transformers' Qwen2VLVideoProcessor.patchify).

    Args:
        frames: (n, H, W, C) uint8 with n a multiple of tp and H, W multiples of p * m.
    Returns:
        pixel_values: (n/tp * H/p * W/p, C * tp * p * p) float32.
        grid_thw: (n/tp, H/p, W/p).
    """
    n, height, width, _ = frames.shape
    if n % temporal_patch or height % (patch * merge) or width % (patch * merge):
        raise ValueError(
            f"frames of shape {frames.shape} do not tile into {temporal_patch}-frame slots "
            f"of {patch * merge}-pixel merged patches"
        )
    x = normalize(frames, mean, std)  # (n, C, H, W)
    gt, gh, gw = n // temporal_patch, height // patch, width // patch
    c = x.shape[1]
    x = x.reshape(gt, temporal_patch, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * temporal_patch * patch * patch)), (gt, gh, gw)


def siglip_frames(frames: np.ndarray, mean, std, image_size: int) -> np.ndarray:
    """LLaVA-OneVision video pixels: frames already resized to the vision image_size.

    Args:
        frames: (n, S, S, C) uint8 with S = image_size (VideoSource(size=(S, S)) resizes).
    Returns:
        pixel_values: (n, C, S, S) float32, rescaled to [0, 1] and standardized.
    """
    if frames.ndim != 4 or frames.shape[1:3] != (image_size, image_size):
        raise ValueError(f"frames of shape {frames.shape} are not {image_size}x{image_size}; "
                         f"resize them with VideoSource(size=({image_size}, {image_size}))")
    return normalize(frames, mean, std)
