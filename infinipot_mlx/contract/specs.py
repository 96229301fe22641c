"""Backend-agnostic facts about each supported model: template pieces, grid, positions.

A ModelSpec is read from a checkpoint folder's config.json, preprocessor_config.json and
generation_config.json (the published hub layout) and is shared by the MLX and the PyTorch
adapters, so both backends build the same token sequence with the same positions and stop
an answer on the same token ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DEFAULT_SYSTEM = "You are a helpful assistant."
# transformers' Qwen2VLVideoProcessor.size: the video defaults when a checkpoint has no
# video_preprocessor_config.json (128 to 768 merged tokens of 28 x 28 pixels per frame).
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28
# The default frame size of a stream: 448 x 448 pixels, 256 tokens per temporal slot, as
# the InfiniPot-V paper streams. Under the default 6,144-token cap that keeps 14 slots (28
# frames) besides a block of 8; the checkpoint's video limit (768 tokens) would keep 4.
DEFAULT_FRAME_PIXELS = 448 * 448


@dataclass(frozen=True)
class ChatPieces:
    """Text pieces of a ChatML conversation, streamed one at a time (pinned tokens)."""

    system: str = "<|im_start|>system\n{system}<|im_end|>\n"
    user_open: str = "<|im_start|>user\n"
    video_open: str = "<|vision_start|>"
    video_close: str = "<|vision_end|>"
    question_close: str = "<|im_end|>\n<|im_start|>assistant\n"
    answer_close: str = "<|im_end|>\n"
    eos: str = "<|im_end|>"
    # Text inside every temporal slot (Qwen3-VL): "<1.2 seconds><|vision_start|>", the slot's
    # visual tokens, "<|vision_end|>". Slot text is stored with its slot (rows.SLOT_TEXT).
    slot_stamp: str = ""  # format of the slot's time, e.g. "<{seconds:.1f} seconds>"
    slot_open: str = ""
    slot_close: str = ""

    @property
    def slot_text(self) -> bool:
        """Whether each slot brings text of its own (slot_stamp, slot_open, slot_close)."""
        return bool(self.slot_stamp or self.slot_open or self.slot_close)

    def slot_text_bound(self, encode) -> int:
        """The most text tokens a slot brings: a timestamp of six digits with its open and
        close pieces (0 without slot text). encode: text -> token ids."""
        if not self.slot_text:
            return 0
        stamp = self.slot_stamp.format(seconds=999999.9) if self.slot_stamp else ""
        return len(encode(stamp + self.slot_open)) + len(encode(self.slot_close))


# llava-hf's chat template for a user message holding a video, then text:
# "<|im_start|>user\n<video>\n{text}<|im_end|>\n<|im_start|>assistant\n". The <video>
# placeholder is the video's tokens (image_newline last, from the adapter), then "\n".
LLAVA_ONEVISION_PIECES = ChatPieces(video_open="", video_close="\n")
# Qwen3-VL's processor writes a video as one group per temporal slot:
# "<{t:.1f} seconds><|vision_start|>" + T x <|video_pad|> + "<|vision_end|>", t the mean time
# of the slot's frames; nothing opens or closes the video as a whole.
QWEN3_VL_PIECES = ChatPieces(video_open="", video_close="", slot_stamp="<{seconds:.1f} seconds>",
                             slot_open="<|vision_start|>", slot_close="<|vision_end|>")


@dataclass(frozen=True)
class ModelSpec:
    """What a session needs to know about a checkpoint, independent of the backend."""

    model_type: str
    num_layers: int
    kv_heads: int
    head_dim: int
    frames_per_slot: int  # sampled frames merged into one temporal slot
    pixels_per_token: int  # side in pixels of one merged visual token (patch * merge)
    position_axes: int  # 3 for M-RoPE, 1 for 1-D RoPE
    tokens_per_second: float
    max_positions: int | None
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    min_pixels: int
    max_pixels: int
    default_policy: str  # position policy used when the config says "auto"
    pieces: ChatPieces = ChatPieces()
    frame_size: tuple[int, int] | None = None  # fixed (H, W) of every frame (LLaVA-OV), else any
    token_grid: tuple[int, int] | None = None  # fixed (rows, cols) of a slot's tokens (LLaVA-OV)
    eos_token_ids: tuple[int, ...] = ()  # generation_config.json's eos_token_id (Qwen: im_end, endoftext)
    slot_time: bool = True  # M-RoPE t from seconds (Qwen2.5-VL); False: t = slot index (Qwen2-VL)

    def slot_grid(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """Merged grid (rows, cols) of one temporal slot for frames of size (H, W)."""
        if self.token_grid is not None:
            return self.token_grid
        height, width = frame_hw
        return height // self.pixels_per_token, width // self.pixels_per_token

    def tokens_per_slot(self, frame_hw: tuple[int, int]) -> int:
        """T: visual tokens one temporal slot adds to the cache."""
        rows, cols = self.slot_grid(frame_hw)
        return rows * cols

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """layers x 2 (K, V) x H_kv x D x bytes (ALGORITHM.md section 8)."""
        return self.num_layers * 2 * self.kv_heads * self.head_dim * bytes_per_element


class CheckpointConfigError(UserError):
    """A checkpoint's JSON file is unreadable, not valid JSON, or lacks what the model needs."""


_FIX = "re-download or re-convert the checkpoint"


def read_json(path: Path) -> dict:
    """The JSON object in path; CheckpointConfigError naming the file when it cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointConfigError(f"{path} is not valid JSON (line {err.lineno} column {err.colno}): "
                                    f"{err.msg}; {_FIX}") from None
    except UnicodeDecodeError:
        raise CheckpointConfigError(f"{path} is not UTF-8 text; {_FIX}") from None
    except OSError as err:
        raise CheckpointConfigError(f"cannot read {path} ({err.strerror or type(err).__name__}); "
                                    f"check the path and its permissions, or {_FIX}") from None
    if not isinstance(data, dict):
        raise CheckpointConfigError(f"{path} holds a JSON {type(data).__name__}, not an object; {_FIX}")
    return data


def load_spec(model_dir: str | Path) -> ModelSpec:
    """Read the ModelSpec of a checkpoint folder; UserError for unsupported or broken configs."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = read_json(config_path)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise UserError(
            f"{model_dir} holds a {model_type!r} model; supported: {', '.join(MODEL_TYPES)}"
        )
    pre_path = model_dir / "preprocessor_config.json"
    pre = read_json(pre_path) if pre_path.exists() else {}
    video_path = model_dir / "video_preprocessor_config.json"  # transformers' video processor
    pre = {**pre, "video": read_json(video_path) if video_path.exists() else {}}
    try:
        spec = MODEL_TYPES[model_type].read_spec(config, pre)
    except KeyError as err:
        raise CheckpointConfigError(f"{config_path} lacks the key {err.args[0]!r} that a {model_type} "
                                    f"config needs; {_FIX}") from None
    except (TypeError, AttributeError, ValueError) as err:  # a section or value of the wrong type
        raise CheckpointConfigError(f"{config_path} or {pre_path.name} has a malformed {model_type} "
                                    f"entry ({err}); {_FIX}") from None
    return dataclasses.replace(spec, eos_token_ids=read_eos_ids(model_dir, config))


def read_eos_ids(model_dir: Path, config: dict) -> tuple[int, ...]:
    """The ids that end an answer, as transformers' generate reads them: generation_config.json's
    `eos_token_id` (an int or a list), else config.json's (top level or text_config), else ().

    Qwen2.5-VL-7B-Instruct lists [151645, 151643]: `<|im_end|>` and `<|endoftext|>`.
    """
    path = model_dir / "generation_config.json"
    generation = read_json(path) if path.exists() else {}
    if generation.get("eos_token_id") is not None:
        return _eos_tuple(generation["eos_token_id"], path)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    value = config.get("eos_token_id")
    value = text.get("eos_token_id") if value is None else value
    return () if value is None else _eos_tuple(value, model_dir / "config.json")


def _eos_tuple(value, path: Path) -> tuple[int, ...]:
    """An eos_token_id entry (int or list of ints) as a tuple; CheckpointConfigError otherwise."""
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointConfigError(f"{path} has eos_token_id {value!r}; expected a token id or a "
                                    f"list of token ids; {_FIX}")
    return tuple(ids)


def video_pixels(video: dict, key: str, size_key: str, default: int) -> int:
    """A per-frame pixel limit of the video processor: `key` overrides `size[size_key]`.

    Frames of a video are sized by the video processor, never by the image processor
    (whose max_pixels, 12,845,056 in Qwen2.5-VL-7B, is meant for one still image).
    """
    value = video.get(key) or (video.get("size") or {}).get(size_key)
    return int(value) if value else default


def qwen2_5_vl_spec(config: dict, pre: dict) -> ModelSpec:
    text = config.get("text_config", config)  # hub layout: text parameters at the top level
    text = config if "hidden_size" in config else text
    vision = config["vision_config"]
    heads = text["num_attention_heads"]
    return ModelSpec(
        model_type="qwen2_5_vl",
        num_layers=text["num_hidden_layers"],
        kv_heads=text["num_key_value_heads"],
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        frames_per_slot=vision.get("temporal_patch_size", 2),
        pixels_per_token=vision.get("patch_size", 14) * vision.get("spatial_merge_size", 2),
        position_axes=3,
        tokens_per_second=float(vision.get("tokens_per_second", 2)),
        max_positions=text.get("max_position_embeddings"),
        image_mean=tuple(pre.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
        image_std=tuple(pre.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
        min_pixels=video_pixels(pre.get("video") or {}, "min_pixels", "shortest_edge", QWEN_VIDEO_MIN_PIXELS),
        max_pixels=video_pixels(pre.get("video") or {}, "max_pixels", "longest_edge", QWEN_VIDEO_MAX_PIXELS),
        default_policy="absolute",
    )


def qwen2_vl_spec(config: dict, pre: dict) -> ModelSpec:
    """Qwen2-VL (Qwen/Qwen2-VL-7B-Instruct layout): Qwen2.5-VL's grid and template, but the
    video's M-RoPE time index is the temporal slot itself (no tokens_per_second)."""
    spec = qwen2_5_vl_spec(config, pre)
    return dataclasses.replace(spec, model_type="qwen2_vl", tokens_per_second=0.0, slot_time=False)


# Qwen3-VL's video processor limits pixels over a whole clip; a stream sizes one frame at a
# time, within the same per-frame range as Qwen2.5-VL's videos: 128 to 768 merged tokens.
QWEN3_VIDEO_TOKENS = (128, 768)


def qwen3_vl_spec(config: dict, pre: dict) -> ModelSpec:
    """Qwen3-VL (Qwen/Qwen3-VL-8B-Instruct layout): nested text_config, 16-px patches merged
    2x2 (32 px per token), interleaved M-RoPE whose video time is text (slot_stamp)."""
    text, vision = config["text_config"], config["vision_config"]
    heads = text["num_attention_heads"]
    side = vision.get("patch_size", 16) * vision.get("spatial_merge_size", 2)
    return ModelSpec(
        model_type="qwen3_vl",
        num_layers=text["num_hidden_layers"],
        kv_heads=text["num_key_value_heads"],
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        frames_per_slot=vision.get("temporal_patch_size", 2),
        pixels_per_token=side,
        position_axes=3,
        tokens_per_second=0.0,  # time is the slot's timestamp text, not a position axis
        max_positions=text.get("max_position_embeddings"),
        image_mean=tuple(pre.get("image_mean", (0.5, 0.5, 0.5))),
        image_std=tuple(pre.get("image_std", (0.5, 0.5, 0.5))),
        min_pixels=QWEN3_VIDEO_TOKENS[0] * side * side,
        max_pixels=QWEN3_VIDEO_TOKENS[1] * side * side,
        default_policy="absolute",
        pieces=QWEN3_VL_PIECES,
        slot_time=False,
    )


def llava_onevision_spec(config: dict, pre: dict) -> ModelSpec:
    """LLaVA-OneVision (llava-hf layout): one frame per slot, 2x2-pooled SigLIP grid, 1-D RoPE."""
    text, vision = config["text_config"], config["vision_config"]
    side, patch = vision.get("image_size", 384), vision.get("patch_size", 14)
    pooled = math.ceil((side // patch) / 2)  # the model's video pooling: 27 -> 14 at 384 px
    heads = text["num_attention_heads"]
    return ModelSpec(
        model_type="llava_onevision",
        num_layers=text["num_hidden_layers"],
        kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        frames_per_slot=1,
        pixels_per_token=2 * patch,  # nominal: frames are resized to frame_size instead
        position_axes=1,
        tokens_per_second=0.0,  # no time axis in 1-D RoPE
        max_positions=text.get("max_position_embeddings", 32768),
        image_mean=tuple(pre.get("image_mean", (0.5, 0.5, 0.5))),
        image_std=tuple(pre.get("image_std", (0.5, 0.5, 0.5))),
        min_pixels=side * side,
        max_pixels=side * side,
        default_policy="compact",
        pieces=LLAVA_ONEVISION_PIECES,
        frame_size=(side, side),
        token_grid=(pooled, pooled),
    )


@dataclass(frozen=True)
class ModelType:
    """Everything that differs per supported model_type, in one place (MODEL_TYPES).

    read_spec: config.json and processor dicts -> ModelSpec.  mlx_adapter and
    reference_adapter: (module, class) of the two backends' adapters.  hf_class: the
    transformers class (the reference loads through AutoModelForImageTextToText; the tiny
    checkpoint builder instantiates it).  verify_keys: config.json entries that
    conversions/convert.py's check reads ("section.key").  vision_dims: (module, function)
    reading the vision tower's sizes for the memory model (budget.model_dims).
    """

    name: str
    read_spec: object
    mlx_adapter: tuple[str, str]
    reference_adapter: tuple[str, str]
    hf_class: str
    verify_keys: tuple[str, ...]
    vision_dims: tuple[str, str]


MODEL_TYPES = {t.name: t for t in (
    ModelType("qwen2_5_vl", qwen2_5_vl_spec,
              ("infinipot_mlx.mlx.adapters.qwen2_5_vl", "Qwen2_5_VLAdapter"),
              ("infinipot_mlx.reference.adapters.qwen2_5_vl", "Qwen2_5_VLAdapter"),
              "Qwen2_5_VLForConditionalGeneration",
              ("video_token_id", "vision_config.patch_size", "vision_config.temporal_patch_size",
               "vision_config.spatial_merge_size"),
              ("infinipot_mlx.contract.budget", "qwen2_5_vl_vision")),
    ModelType("qwen2_vl", qwen2_vl_spec,
              ("infinipot_mlx.mlx.adapters.qwen2_vl", "Qwen2VLAdapter"),
              ("infinipot_mlx.reference.adapters.qwen2_vl", "Qwen2VLAdapter"),
              "Qwen2VLForConditionalGeneration",
              ("video_token_id", "vision_config.patch_size", "vision_config.temporal_patch_size",
               "vision_config.spatial_merge_size"),
              ("infinipot_mlx.contract.budget", "qwen2_vl_vision")),
    ModelType("qwen3_vl", qwen3_vl_spec,
              ("infinipot_mlx.mlx.adapters.qwen3_vl", "Qwen3VLAdapter"),
              ("infinipot_mlx.reference.adapters.qwen3_vl", "Qwen3VLAdapter"),
              "Qwen3VLForConditionalGeneration",
              ("video_token_id", "vision_config.patch_size", "vision_config.temporal_patch_size",
               "vision_config.spatial_merge_size", "vision_config.deepstack_visual_indexes"),
              ("infinipot_mlx.contract.budget", "qwen3_vl_vision")),
    ModelType("llava_onevision", llava_onevision_spec,
              ("infinipot_mlx.mlx.adapters.llava_onevision", "LlavaOnevisionAdapter"),
              ("infinipot_mlx.reference.adapters.llava_onevision", "LlavaOnevisionAdapter"),
              "LlavaOnevisionForConditionalGeneration",
              ("video_token_index", "vision_config.image_size", "vision_config.patch_size"),
              ("infinipot_mlx.contract.budget", "llava_onevision_vision")),
)}


def model_type(name: str) -> ModelType:
    """The registry entry of a model_type; UserError naming the supported ones otherwise."""
    if name not in MODEL_TYPES:
        raise UserError(f"no support for model type {name!r}; supported: {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[name]


def load_class(where: tuple[str, str]):
    """(module, class name) -> the class, imported on first use (no backend imported before)."""
    import importlib

    module, name = where
    return getattr(importlib.import_module(module), name)
