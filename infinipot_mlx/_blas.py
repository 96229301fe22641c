"""Load an optimized CBLAS into the process before MLX is first imported (Linux only).

MLX's Linux CPU wheel links netlib's reference BLAS; a 1k float32 matmul takes ~400 ms
there against ~11 ms with OpenBLAS. Loading a system OpenBLAS with RTLD_GLOBAL before
libmlx is loaded makes libmlx bind cblas_* to it (1k matmul: ~400 ms -> ~11 ms on 2 cores).

INFINIPOT_BLAS=off disables this; INFINIPOT_BLAS=/path/to/libcblas.so names a library.
When a named library cannot be loaded, blas_error says why and what to do: library users
get one RuntimeWarning (warn_blas_error, at their first model load), the CLIs exit with
one line through check_blas(). A candidate missing under "auto" is no error.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

from .errors import UserError

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

loaded_blas: str | None = None  # path of the library loaded, None if none
blas_error: str | None = None  # why the INFINIPOT_BLAS library was not loaded, None if no failure
_warned = False


def load_optimized_blas() -> str | None:
    """Load the first available optimized CBLAS globally; returns its path or None."""
    global loaded_blas, blas_error
    if loaded_blas is not None or not sys.platform.startswith("linux"):
        return loaded_blas
    choice = os.environ.get("INFINIPOT_BLAS", "auto").strip()
    if choice.lower() in ("off", "0", "none", "false"):
        return None
    explicit = choice.lower() not in ("", "auto")
    if "mlx.core" in sys.modules:  # too late: libmlx already bound its BLAS symbols
        if explicit:
            blas_error = _failure(choice, "mlx was imported before infinipot_mlx; import infinipot_mlx first")
        return None
    for path in (choice,) if explicit else CANDIDATES:
        reason = _load(path)
        if reason is None:
            loaded_blas, blas_error = path, None
            return path
        if explicit:
            blas_error = _failure(choice, reason)
    return None


def _load(path: str) -> str | None:
    """Load path with RTLD_GLOBAL; None when loaded, else why not."""
    if not os.path.exists(path):
        return "no such file"
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        return " ".join(str(err).split()) or "not a loadable library"
    return None


def _failure(path: str, reason: str) -> str:
    return (f"INFINIPOT_BLAS={path} was not loaded ({reason}); unset INFINIPOT_BLAS (or set it to off) "
            "or point it at a CBLAS library such as /usr/lib/x86_64-linux-gnu/libopenblas.so.0")


def warn_blas_error() -> None:
    """One RuntimeWarning per process when an explicit INFINIPOT_BLAS failed (library users)."""
    global _warned
    if blas_error and not _warned:
        _warned = True
        warnings.warn(blas_error, RuntimeWarning, stacklevel=3)


def check_blas() -> None:
    """For CLIs: UserError (one line, exit 2) when an explicit INFINIPOT_BLAS failed."""
    global _warned
    if blas_error:
        _warned = True  # reported here; no warning as well
        raise UserError(blas_error)


def blas_description() -> str:
    """One line naming the BLAS MLX uses, for benchmark output."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if loaded_blas:
        return f"OpenBLAS preloaded ({loaded_blas})"
    if blas_error:
        return f"MLX wheel's bundled reference BLAS (slow; {blas_error})"
    return "MLX wheel's bundled reference BLAS (slow; apt-get install libopenblas0-pthread)"
