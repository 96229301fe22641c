"""infinipot_mlx: InfiniPot-V streaming video KV-cache compression on MLX.

The optimized BLAS is loaded before anything imports mlx (Linux; see _blas.py).
MLX-dependent names are imported lazily so that `infinipot_mlx.reference` works on
machines with torch and no mlx (for example an NVIDIA Jetson), and so that the command
lines parse and check their flags before mlx, mlx-vlm, torch or OpenCV is imported (a
`--help` or a bad flag answers in a fraction of a second). The BLAS is still preloaded
here, first: nothing imports mlx before this package's __init__ has run.
"""

from ._blas import load_optimized_blas

load_optimized_blas()

from .contract.config import InfiniPotConfig  # noqa: E402
from .deprecated import install_moved_module_finder  # noqa: E402

install_moved_module_finder()  # the module paths before 0.3 (deprecated.MOVED_MODULES)

__all__ = ["InfiniPotConfig", "select_tokens", "StreamSession", "load", "VideoSource"]

_LAZY = {
    "select_tokens": ("infinipot_mlx.mlx.select", "select_tokens"),
    "StreamSession": ("infinipot_mlx.stream.session", "StreamSession"),
    "load": ("infinipot_mlx.mlx.backend", "load"),
    "VideoSource": ("infinipot_mlx.video.source", "VideoSource"),  # imports OpenCV
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'infinipot_mlx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
