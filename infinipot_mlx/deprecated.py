"""Old public names, accepted through the 0.2 releases with a DeprecationWarning.

Up to version 0.1 the API used the authors' word "frame" for a temporal slot of the vision
grid (ALGORITHM.md section 12): `tokens_per_frame`, `frame_ids`, `block_frames`. They are
now `tokens_per_slot`, `slot_ids` and `block_slots`; "frame" means a sampled picture only.
"""

from __future__ import annotations

import functools
import warnings

RENAMED = {"tokens_per_frame": "tokens_per_slot", "frame_ids": "slot_ids",
           "block_frames": "block_slots"}  # old name -> new name


def warn_renamed(old: list[str], stacklevel: int = 3) -> None:
    """One DeprecationWarning naming each old name and its new one."""
    verb = "is" if len(old) == 1 else "are"
    warnings.warn(f"{', '.join(old)} {verb} deprecated; use {', '.join(RENAMED[o] for o in old)} "
                  "(temporal slots, not sampled frames)", DeprecationWarning, stacklevel=stacklevel)


def accepts_old_names(func):
    """Let `func` take the old keyword names of RENAMED, with one warning per call."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        old_names = [k for k in kwargs if k in RENAMED]
        for old in old_names:
            new = RENAMED[old]
            if new in kwargs:
                raise TypeError(f"{func.__qualname__}() got both {old} and {new}; pass {new} only")
            kwargs[new] = kwargs.pop(old)
        if old_names:
            warn_renamed(old_names)
        return func(*args, **kwargs)

    return wrapper


def old_name(old: str) -> property:
    """A read-only property under the old name that returns the new attribute."""

    def get(self):
        warn_renamed([old])
        return getattr(self, RENAMED[old])

    return property(get, doc=f"Deprecated: {RENAMED[old]}.")


# ----- modules that moved in 0.3 (the flat top level grouped by role) ----------------------
MOVED_MODULES = {  # old module -> new module
    **{f"infinipot_mlx.{m}": f"infinipot_mlx.contract.{m}" for m in
       ("config", "plan", "budget", "candidates", "rows", "positions", "specs", "pixels", "model_path")},
    **{f"infinipot_mlx.{m}": f"infinipot_mlx.stream.{m}" for m in
       ("session", "feed", "room", "answer", "evidence", "locking", "protocols")},
    "infinipot_mlx.memories": "infinipot_mlx.stream.memory_file",
    "infinipot_mlx.reader": "infinipot_mlx.video.reader",
    "infinipot_mlx.mlx.memory": "infinipot_mlx.mlx.memory_probe",
}


class _MovedModuleFinder:
    """`import infinipot_mlx.session` still works: it is the module at its new place, with a
    DeprecationWarning naming that place. (`infinipot_mlx.video` is now a package; its
    __init__ forwards VideoSource and friends the same way.)"""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        import importlib

        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} is deprecated; import {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # already executed under its new name


def install_moved_module_finder() -> None:
    import sys

    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
