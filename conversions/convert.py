"""Convert a Hugging Face checkpoint (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, LLaVA-OneVision) to MLX, then check it.

    python conversions/convert.py --hf-path DIR_OR_REPO --mlx-path OUT \
        [--dtype float16|bfloat16|float32] [-q --q-bits 4|8 --q-group-size 64] [--no-verify]

mlx_vlm.convert does the conversion (loading, casting, quantizing, saving). Afterwards the
source's processor_config.json is put back: mlx-vlm writes an mlx-only one that transformers
cannot open. Unless --no-verify, one prompt with frames runs through the source in
transformers (float32) and through the result in mlx_vlm, with the same token ids, the same
pixel values (pixels.py: qwen_patchify for Qwen, normalize for LLaVA-OV) and, for Qwen, the
same M-RoPE positions (positions.py; Qwen3-VL's slots each within their timestamp text), laid
out as the checkpoint's ModelSpec says (specs.MODEL_TYPES). It prints the max |logit
difference|, top-1 agreement, the mean KL(source || converted) over positions and the sizes on
disk.

Exit codes: 0 done; 1 an unquantized float32 conversion differs by more than 1e-4; 2 bad input,
one line on stderr (missing folder, corrupt or incomplete config.json, no weights, unsupported
model, hub repo not reachable, output folder not empty, a bad flag); any other error is a bug
and keeps its traceback.
Notation: L tokens of the prompt, V vocabulary, F frames, S = F / 2 temporal slots (Qwen).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import infinipot_mlx  # noqa: F401  (BLAS preload; must precede any mlx import)

import numpy as np
from infinipot_mlx._blas import check_blas
from infinipot_mlx.errors import OneLineParser, UserError, report
from infinipot_mlx.contract.model_path import require_weights, resolve_model_path
from infinipot_mlx.contract.specs import MODEL_TYPES, load_spec, read_json

FLOAT32_TOLERANCE = 1e-4
EXIT_MISMATCH, EXIT_BAD_INPUT = 1, 2
QUESTION = "Describe the video."
# what mlx_vlm.utils.get_model_path downloads
FPS = 2.0


class ConversionError(UserError):
    """A problem the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python conversions/convert.py", description=__doc__.split("\n")[0])
    p.add_argument("--hf-path", required=True, help="local HF checkpoint folder or hub repo id")
    p.add_argument("--mlx-path", required=True, help="output folder (new or empty)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                   help="weight dtype (default: the checkpoint's)")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize the language model")
    p.add_argument("--q-bits", type=int, choices=(4, 8), default=None, help="bits per weight (default 4)")
    p.add_argument("--q-group-size", type=int, default=None, help="quantization group size (default 64)")
    p.add_argument("--no-verify", action="store_true", help="skip the logit check against transformers")
    return p


# ----- paths and configs ----------------------------------------------------------------------------
def resolve_source(hf_path: str) -> Path:
    """The local folder of --hf-path: the folder itself, or the hub snapshot of a repo id."""
    return resolve_model_path(hf_path, flag="--hf-path")


def read_config(source: Path) -> dict:
    """config.json of a supported model with every key the conversion needs; UserError otherwise
    (a file that is not JSON or lacks a key is named by specs.read_json / load_spec)."""
    config = read_json(source / "config.json")
    if config.get("model_type") not in MODEL_TYPES:
        raise ConversionError(f"{source} holds a {config.get('model_type')!r} model; this script converts "
                              f"{', '.join(MODEL_TYPES)}")
    load_spec(source)  # the keys the session reads
    for key in MODEL_TYPES[config["model_type"]].verify_keys:  # what the check reads
        section, _, name = key.rpartition(".")
        if name not in (config.get(section, {}) if section else config):
            raise ConversionError(f"{source / 'config.json'} lacks the key {key!r}; re-download the checkpoint")
    return config


def check_output(mlx_path: Path, source: Path) -> None:
    if mlx_path.exists() and (not mlx_path.is_dir() or any(mlx_path.iterdir())):
        raise ConversionError(f"--mlx-path {mlx_path} already exists and is not an empty folder; "
                              "choose a new folder")
    if mlx_path.resolve() == source.resolve():
        raise ConversionError("--mlx-path must differ from --hf-path")


def source_dtype(config: dict) -> str | None:
    """The dtype mlx_vlm.convert keeps when --dtype is not given."""
    text = config.get("text_config", {})
    return config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or text.get("dtype")


def folder_bytes(path: Path) -> int:
    """Bytes of the weight files (*.safetensors) in a folder."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# ----- conversion -------------------------------------------------------------------------------------
def convert_checkpoint(source: Path, out: Path, args) -> None:
    """mlx_vlm.convert, then the source's HF processor_config.json back in place."""
    from mlx_vlm.convert import convert

    convert(str(source), str(out), quantize=args.quantize, q_bits=args.q_bits or 4,
            q_group_size=args.q_group_size or 64, dtype=args.dtype)
    restore_processor_config(source, out)


def restore_processor_config(source: Path, out: Path) -> None:
    """mlx-vlm may save an mlx-only processor_config.json (e.g. a Qwen3VLImageProcessor) that
    transformers cannot open: copy the source's back, or drop it when the source has none."""
    original, written = source / "processor_config.json", out / "processor_config.json"
    if original.is_file():
        shutil.copy2(original, written)
    elif written.exists():
        written.unlink()


# ----- verification inputs ------------------------------------------------------------------------------
def _encode(source: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def _image_stats(source: Path) -> tuple[list, list]:
    path = source / "preprocessor_config.json"
    pre = read_json(path)
    if "image_mean" not in pre or "image_std" not in pre:
        raise ConversionError(f"{path} lacks image_mean or image_std; re-download the checkpoint")
    return pre["image_mean"], pre["image_std"]


def qwen_inputs(source: Path, config: dict, seed: int = 0) -> dict:
    """ids (L,), pixels (S*gh*gw, C*tp*p*p), grid (3,), positions (3, L): 2 slots of 2 x 3 merged
    tokens, laid out and positioned as the checkpoint's ModelSpec says (specs.MODEL_TYPES):
    t from each slot's time (Qwen2.5-VL), t = the slot's index (spec.slot_time False, Qwen2-VL),
    or each slot in its own text (spec.pieces.slot_text: timestamp, open, close; Qwen3-VL)."""
    from infinipot_mlx.contract.pixels import qwen_patchify
    from infinipot_mlx.contract.positions import next_after, slot_seconds, slot_text_positions, slot_times, text_positions, video_positions
    from infinipot_mlx.contract.specs import DEFAULT_SYSTEM

    spec, vision, encode = load_spec(source), config["vision_config"], _encode(source)
    pieces = spec.pieces
    patch, tp, merge = vision["patch_size"], vision["temporal_patch_size"], vision["spatial_merge_size"]
    side = patch * merge
    frames = np.random.default_rng(seed).integers(0, 256, (2 * tp, 2 * side, 3 * side, 3), np.uint8)
    pixels, (gt, gh, gw) = qwen_patchify(frames, *_image_stats(source), patch, tp, merge)
    grid = (gh // merge, gw // merge)
    pads = [config["video_token_id"]] * (grid[0] * grid[1])  # one slot's visual tokens
    prefix = encode(pieces.system.format(system=DEFAULT_SYSTEM) + pieces.user_open + pieces.video_open)
    suffix = encode(pieces.video_close + QUESTION + pieces.question_close)
    if pieces.slot_text:  # per slot: "<t seconds>" + open, its tokens, close (as feed._slot_texts)
        stamps = slot_seconds([i / FPS for i in range(len(frames))], gt, tp)
        texts = [(encode(pieces.slot_stamp.format(seconds=t) + pieces.slot_open), encode(pieces.slot_close))
                 for t in stamps]
        video = slot_text_positions(len(prefix), [len(a) for a, _ in texts], [len(b) for _, b in texts], grid)
        video_ids = [i for lead, trail in texts for i in lead + pads + trail]
    else:
        video = video_positions(spec, len(prefix), 0, slot_times(0, gt, tp / FPS), grid)
        video_ids = pads * gt
    positions = np.concatenate([text_positions(0, len(prefix)), video,
                                text_positions(next_after(video), len(suffix))], axis=1)  # (3, L)
    ids = prefix + video_ids + suffix
    return dict(ids=ids, pixels=pixels, grid=(gt, gh, gw), positions=positions.astype(np.int64))


def llava_inputs(source: Path, config: dict, seed: int = 0, frames: int = 2) -> dict:
    """ids (L,), pixels (1, F, C, H, W) for F frames at the vision image size."""
    from infinipot_mlx.contract.pixels import normalize
    from infinipot_mlx.contract.specs import DEFAULT_SYSTEM, ChatPieces

    vision, pieces, encode = config["vision_config"], ChatPieces(), _encode(source)
    size = vision["image_size"]
    rgb = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), np.uint8)
    pixels = normalize(rgb, *_image_stats(source))[None]  # (1, F, C, H, W)
    pooled = math.ceil(size // vision["patch_size"] / 2) ** 2  # tokens per frame after 2x pooling
    prefix = encode(pieces.system.format(system=DEFAULT_SYSTEM) + pieces.user_open)
    suffix = encode("\n" + QUESTION + pieces.question_close)
    ids = prefix + [config["video_token_index"]] * (frames * pooled + 1) + suffix  # + image_newline
    return dict(ids=ids, pixels=pixels)


# ----- logits from both frameworks ---------------------------------------------------------------------------
def reference_logits(source: Path, config: dict, inputs: dict) -> np.ndarray:
    """transformers, float32: logits (L, V) of the source checkpoint."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    name = MODEL_TYPES[config["model_type"]].hf_class
    model = getattr(transformers, name).from_pretrained(str(source), dtype=torch.float32).eval()
    kwargs = dict(input_ids=torch.tensor([inputs["ids"]]),
                  pixel_values_videos=torch.from_numpy(inputs["pixels"]))
    if "positions" in inputs:
        kwargs.update(video_grid_thw=torch.tensor([inputs["grid"]]),
                      position_ids=torch.from_numpy(inputs["positions"])[:, None, :])  # (3, 1, L)
    with torch.no_grad():
        return model(**kwargs).logits[0].float().numpy()


def mlx_logits(out: Path, inputs: dict) -> np.ndarray:
    """mlx_vlm.load of the converted folder: logits (L, V) as float32.

    With positions (M-RoPE), the model's own input embeddings (visual tokens, and DeepStack
    features where the model has them) go to its language model with our positions: some
    mlx-vlm models (Qwen3-VL) would replace given position_ids by their get_rope_index."""
    import mlx.core as mx
    from mlx_vlm import load

    model, _ = load(str(out))
    ids = mx.array([inputs["ids"]])
    if "positions" in inputs:
        features = model.get_input_embeddings(ids, pixel_values_videos=mx.array(inputs["pixels"]),
                                              video_grid_thw=mx.array([inputs["grid"]])).to_dict()
        features = {k: v for k, v in features.items() if v is not None}
        features["position_ids"] = mx.array(inputs["positions"][:, None, :].astype(np.int32))  # (3, 1, L)
        logits = model.language_model(ids, **features).logits
    else:
        logits = model(ids, pixel_values_videos=mx.array(inputs["pixels"])).logits
    return np.array(logits[0].astype(mx.float32))


def compare_logits(reference: np.ndarray, converted: np.ndarray) -> dict:
    """max |difference|, top-1 agreement and mean KL(reference || converted) over positions."""
    ref, got = reference.astype(np.float64), converted.astype(np.float64)  # (L, V)
    log_p = ref - _logsumexp(ref)
    log_q = got - _logsumexp(got)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)  # (L,)
    return dict(max_abs_diff=float(np.max(np.abs(ref - got))),
                top1_agreement=float(np.mean(ref.argmax(-1) == got.argmax(-1))),
                mean_kl=float(np.mean(kl)))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True))


def verify(source: Path, out: Path, config: dict) -> dict:
    """The same prompt and pixels through both; the metrics of compare_logits."""
    make = qwen_inputs if load_spec(source).position_axes == 3 else llava_inputs  # M-RoPE or 1-D
    inputs = make(source, config)
    reference = reference_logits(source, config, inputs)  # the torch model is freed before mlx loads
    return compare_logits(reference, mlx_logits(out, inputs))


# ----- command line --------------------------------------------------------------------------------------------
def run(args) -> int:
    if not args.quantize and (args.q_bits or args.q_group_size):
        raise ConversionError("--q-bits and --q-group-size need -q/--quantize")
    source = resolve_source(args.hf_path)
    config = read_config(source)
    require_weights(source)  # mlx_vlm.convert answers a folder without weights with a code snippet
    out = Path(args.mlx_path).expanduser()
    check_output(out, source)
    convert_checkpoint(source, out, args)
    src_size, out_size = folder_bytes(source), folder_bytes(out)
    print(f"converted {config['model_type']} to {out}: {src_size / 1e6:.1f} MB -> {out_size / 1e6:.1f} MB "
          f"on disk ({out_size / max(src_size, 1):.2f}x)")
    if args.no_verify:
        return 0
    metrics = verify(source, out, config)
    print(f"verification: max |logit difference| {metrics['max_abs_diff']:.3g}, top-1 agreement "
          f"{metrics['top1_agreement']:.1%}, mean KL {metrics['mean_kl']:.3g} over positions")
    strict = not args.quantize and (args.dtype or source_dtype(config)) == "float32"
    problem = float32_mismatch(metrics, out) if strict else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_MISMATCH
    return 0


def float32_mismatch(metrics: dict, out: Path) -> str | None:
    """The failure message of an unquantized float32 conversion off by more than 1e-4, or None."""
    diff = metrics["max_abs_diff"]
    if diff <= FLOAT32_TOLERANCE:  # False for NaN too
        return None
    return (f"the float32 conversion in {out} differs from the source by {diff:.3g} "
            f"(max |logit difference|), more than {FLOAT32_TOLERANCE:g}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_blas()
        return run(args)
    except (UserError, OSError) as err:  # anything else is a bug: keep its traceback
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
