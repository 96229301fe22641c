"""Where a checkpoint lives: a local folder, or a hub snapshot. No array library imported.

Shared by the MLX session and the PyTorch reference session, so the reference backend
runs on machines without mlx (for example an NVIDIA Jetson).
"""

from __future__ import annotations

from pathlib import Path

HUB_PATTERNS = ["*.json", "*.jsonl", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


class ModelPathError(ValueError):
    """The model path does not exist locally and cannot be fetched."""


def resolve_model_path(path_or_repo: str) -> Path:
    """A local checkpoint folder, or the hub snapshot of a repo id (ModelPathError offline)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelPathError(f"{path} has no config.json; pass --model a folder with an MLX or HF checkpoint")
        return path
    if path_or_repo.startswith((".", "/", "~")) or path_or_repo.count("/") != 1:
        raise ModelPathError(f"model folder {path_or_repo} does not exist; pass --model an existing folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path_or_repo, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # hub errors vary by version; all mean "not available here"
        raise ModelPathError(
            f"cannot fetch {path_or_repo} ({type(err).__name__}); offline, pass --model a local "
            "checkpoint folder (python conversions/convert.py makes one), or run --demo"
        ) from None
