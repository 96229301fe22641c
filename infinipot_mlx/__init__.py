"""infinipot_mlx: InfiniPot-V streaming video KV-cache compression on MLX.

The optimized BLAS is loaded before anything imports mlx (Linux; see _blas.py).
MLX-dependent names are imported lazily so that `infinipot_mlx.reference` works on
machines with torch and no mlx (for example an NVIDIA Jetson).
"""

from ._blas import load_optimized_blas

load_optimized_blas()

from .config import InfiniPotConfig  # noqa: E402

__all__ = ["InfiniPotConfig", "select_tokens", "StreamSession", "load"]

_LAZY = {
    "select_tokens": ("infinipot_mlx.mlx.select", "select_tokens"),
    "StreamSession": ("infinipot_mlx.session", "StreamSession"),
    "load": ("infinipot_mlx.mlx.backend", "load"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'infinipot_mlx' has no attribute {name!r}")
