"""Where a checkpoint lives: a local folder, or a hub snapshot. No array library imported.

Shared by the MLX session and the PyTorch reference session, so the reference backend
runs on machines without mlx (for example an NVIDIA Jetson).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

# the checkpoint each backend opens without --model: MLX a 4-bit conversion, the reference the
# original weights (here, not in the backends, so that finding it imports neither mlx nor torch)
DEFAULT_MODELS = {"mlx": "mlx-community/Qwen2.5-VL-7B-Instruct-4bit", "reference": "Qwen/Qwen2.5-VL-7B-Instruct"}
HUB_PATTERNS = ["*.json", "*.jsonl", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


class ModelPathError(UserError):
    """The model path does not exist locally, cannot be fetched, or holds no weights."""


def resolve_model_path(path_or_repo: str, flag: str = "--model") -> Path:
    """A local checkpoint folder, or the hub snapshot of a repo id (ModelPathError offline).

    flag: the option the user gave it with, named in the messages (convert.py: --hf-path).
    """
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelPathError(f"{path} has no config.json; pass {flag} a folder with an MLX or HF checkpoint")
        return path
    if path_or_repo.startswith((".", "/", "~")) or path_or_repo.count("/") != 1:
        raise ModelPathError(f"model folder {path_or_repo} does not exist; pass {flag} an existing folder "
                             "or a hub repo id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path_or_repo, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # hub errors vary by version; all mean "not available here"
        more = " (python conversions/convert.py makes one), or run --demo" if flag == "--model" else ""
        raise ModelPathError(f"cannot fetch {path_or_repo} from the Hugging Face hub ({type(err).__name__}); "
                             f"offline, pass {flag} a local checkpoint folder{more}") from None


def require_weights(path: Path, patterns: tuple[str, ...] = ("*.safetensors",)) -> None:
    """ModelPathError unless the folder holds weight files (and every shard its index names).

    Checked before a loader runs: mlx_vlm.load answers a folder without weights with a
    multi-line code snippet, transformers with a long OSError.
    """
    if not any(f.is_file() for pattern in patterns for f in path.glob(pattern)):
        raise ModelPathError(
            f"no {' or '.join(patterns)} weights in {path}; download the whole checkpoint "
            "(config.json and its weight files) or convert one with python conversions/convert.py")
    for index in path.glob("*.safetensors.index.json"):
        names = {name for name in _weight_map(index).values() if isinstance(name, str)}
        missing = sorted(name for name in names if not (path / name).is_file())
        if missing:
            raise ModelPathError(
                f"{index.name} in {path} names {len(missing)} missing weight file(s) "
                f"({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''}); the download is "
                "incomplete: download the checkpoint again")


def _weight_map(index: Path) -> dict:
    """The weight_map of a safetensors index ({} when the index cannot be read)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    return weight_map if isinstance(weight_map, dict) else {}
