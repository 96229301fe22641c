"""What every benchmark records beside its figures: BLAS, threads, machine, load, versions.

Benchmarks on these machines share 2 cores with other work, so the load average is
recorded (at the start and, by the caller, at the end) next to every result.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from .. import _blas
from .._blas import blas_description
from ..errors import UserError

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def flag(name: str) -> str:
    """The command-line spelling of an argparse destination: answer_tokens -> --answer-tokens."""
    return "--" + name.replace("_", "-")


def require_positive(args, *names: str, minimum: float = 0, strict: bool = True) -> None:
    """UserError naming the first flag whose value (None: unset, skipped) is not above minimum
    (strict) or at least minimum; values may be numbers or lists of numbers (nargs)."""
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if v is not None and not (v > minimum if strict else v >= minimum)]
        if bad:
            rule = {(True, 0): "positive", (False, 0): "zero or more"}.get(
                (strict, minimum), f"{'above' if strict else 'at least'} {minimum:g}")
            raise UserError(f"{flag(name)} must be {rule}, got {bad[0]:g}")


def parse_list(text: str, name: str, choices=None, kind=str) -> list:
    """A comma-separated flag value as a list of `kind`; UserError for an empty list, a value
    `kind` cannot read, or one not among `choices`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{flag(name)} is empty; give a comma-separated list")
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise UserError(f"{flag(name)} {text!r} is not a comma-separated list of numbers") from None
    unknown = [v for v in values if choices is not None and v not in choices]
    if unknown:
        raise UserError(f"{flag(name)}: unknown {', '.join(map(str, unknown))}; "
                        f"choose from {', '.join(choices)}")
    return values


def openblas_threads() -> int | None:
    """Threads of the preloaded OpenBLAS (what MLX's CPU matmuls use), None if unknown."""
    if not _blas.loaded_blas:
        return None
    try:
        return int(ctypes.CDLL(_blas.loaded_blas).openblas_get_num_threads())
    except (OSError, AttributeError):
        return None


def _versions() -> dict:
    """Versions of python, numpy, mlx, mlx-vlm, and torch when it is imported."""
    import mlx.core as mx

    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "mlx": mx.__version__}
    try:
        from importlib.metadata import version

        versions["mlx_vlm"] = version("mlx-vlm")
    except Exception:  # not installed: leave it out
        pass
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    return versions


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine shows here)."""
    return [round(x, 2) for x in os.getloadavg()]


def environment() -> dict:
    """BLAS, threads, machine, date, load and versions, for the record."""
    threads = {"openblas": openblas_threads(), "os_cpu_count": os.cpu_count(),
               "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    return {
        "blas": blas_description(),
        "threads": threads,
        "load_average_1m": os.getloadavg()[0],  # the machine may be shared
        "load_average": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
        "versions": _versions(),
    }


def print_environment(record: dict) -> None:
    """Print BLAS, threads, load, versions and machine from an environment() record."""
    threads = record["threads"]
    print(f"BLAS (MLX): {record['blas']}")
    print(f"threads: openblas {threads['openblas']}, torch {threads.get('torch', 'not imported')}, "
          f"os.cpu_count {threads['os_cpu_count']}, env {threads['env'] or 'unset'}")
    loads = record.get("load_average_start", record["load_average"])
    end = record.get("load_average_end")
    print(f"load average (1/5/15 min): start {loads}" + (f", end {end}" if end else ""))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    print(f"machine: {record['machine']['platform']} ({record['machine']['processor']}, "
          f"{record['machine']['cpu_count']} CPUs); {record['date']}")


def write_json(out: Path, name: str, record: dict) -> Path:
    """Write record as indented JSON to out/name; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
