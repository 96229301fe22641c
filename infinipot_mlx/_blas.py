"""Load an optimized CBLAS into the process before MLX is first imported (Linux only).

MLX's Linux CPU wheel links netlib's reference BLAS; a 1k float32 matmul takes ~400 ms
there against ~11 ms with OpenBLAS. Loading a system OpenBLAS with RTLD_GLOBAL before
libmlx is loaded makes libmlx bind cblas_* to it (see shared/PERFORMANCE.md).

INFINIPOT_BLAS=off disables this; INFINIPOT_BLAS=/path/to/libcblas.so names a library.
"""

from __future__ import annotations

import ctypes
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

loaded_blas: str | None = None  # path of the library loaded, None if none


def load_optimized_blas() -> str | None:
    """Load the first available optimized CBLAS globally; returns its path or None."""
    global loaded_blas
    if loaded_blas is not None or not sys.platform.startswith("linux"):
        return loaded_blas
    choice = os.environ.get("INFINIPOT_BLAS", "auto").strip()
    if choice.lower() in ("off", "0", "none", "false"):
        return None
    if "mlx.core" in sys.modules:
        return None  # too late: libmlx already bound its BLAS symbols
    paths = CANDIDATES if choice.lower() in ("", "auto") else (choice,)
    for path in paths:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            loaded_blas = path
            return path
    return None


def blas_description() -> str:
    """One line naming the BLAS MLX uses, for benchmark output."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if loaded_blas:
        return f"OpenBLAS preloaded ({loaded_blas})"
    return "MLX wheel's bundled reference BLAS (slow; apt-get install libopenblas0-pthread)"
