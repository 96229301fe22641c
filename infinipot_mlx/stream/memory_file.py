"""Video memories on disk: a session's capped KV cache and its state, saved and loaded
exactly (ALGORITHM.md section 11).

A memory file is safetensors (as mlx-lm's save_prompt_cache writes prompt caches): one
tensor group per layer, `{layer}.keys` and `{layer}.values` (1, H, n, D) as stored (after
RoPE; bfloat16 travels bit for bit as uint16), `{layer}.slot`, `.patch`, `.pos` (H, n)
int32 row labels, `pending_frames` (queued frames of an unfinished block), and string
metadata: `format`, `version`, `kv_quantization` (`null`, or the bits and group size of a
quantized cache, whose `{layer}.keys` / `.values` are then the packed uint32 rows beside
`_scales` and `_biases` (1, H, n, D / group), saved bit for bit), and `infinipot`, one JSON
object holding everything else:

- the model's identity (model_identity): config.json's hash and each weight file's name and
  sampled content hash (its size, its header and 4 MB spread over it: content_hash), so a
  fine-tune of the same shapes differs and a 15 GB model is not read whole at every load;
- the backend, the key/value dtype, the InfiniPotConfig, fps, frame size;
- the session state: transcript, turns, next position, the open video segment, per-slot
  source timestamps and video, the pinned answer in progress, counters;
- the videos streamed (name, sampled content hash: content_hash) and the creation time;
- `sha256`: a checksum over every tensor's bytes and the JSON itself (without it).

A save is atomic (a temporary file beside the target, fsync, rename): a process killed
while saving leaves the previous file whole. A load verifies the checksum, the format
version and the model's identity, and names both sides of any mismatch (MemoryFileError).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path

import numpy as np

from ..errors import UserError

FORMAT, VERSION = "infinipot-memory", 3
READABLE = ("1", "2", "3")  # 1 named the slot labels `{layer}.frame` and config block_frames; 3 adds kv_quantization
_PARTS = ("", "_scales", "_biases")  # a quantized tensor's packed values, then its scales and biases
_SAMPLES, _CHUNK = 64, 1 << 16  # content_hash reads 64 chunks of 64 KiB, whatever the size


class MemoryFileError(UserError):
    """A memory file that cannot be written, read, trusted or used with this model."""


# ----- identities ------------------------------------------------------------------------------
def content_hash(path: str | Path) -> str:
    """sha256 of a file's size and 64 evenly spaced 64 KiB chunks (the whole file when smaller
    than that), so a 10 GB video costs 4 MB of reading; 'sampled-sha256:' prefixed."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLES * _CHUNK:
            digest.update(f.read())
        else:
            for i in range(_SAMPLES):
                f.seek((size - _CHUNK) * i // (_SAMPLES - 1))
                digest.update(f.read(_CHUNK))
    return "sampled-sha256:" + digest.hexdigest()


def model_identity(model_dir: str | Path) -> dict:
    """{'name', 'config_sha256', 'weights_sha256'} of a checkpoint folder (module docstring),
    computed once per process for as long as its files keep their sizes and times."""
    folder = Path(model_dir).resolve()
    files = sorted([folder / "config.json", *folder.glob("*.safetensors")])
    return dict(_identity(folder, tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)))


@functools.lru_cache(maxsize=8)
def _identity(folder: Path, _signature: tuple) -> tuple:
    weights = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(f"{file.name}:{content_hash(file)}".encode())
    return (("name", folder.name), ("config_sha256", hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()),
            ("weights_sha256", weights.hexdigest()))


def identity(session) -> dict:
    """model_identity of the session's checkpoint folder (MemoryFileError when it has none)."""
    if session.model_dir is None:
        raise MemoryFileError("this session does not know its checkpoint folder, so its memory cannot "
                              "be checked against a model; open it with load(...) or pass model_dir=")
    return model_identity(session.model_dir)


# ----- writing ---------------------------------------------------------------------------------
def save(session, path: str | Path) -> Path:
    """Write `session` to `path` atomically; returns the path. MemoryFileError if it cannot."""
    from safetensors.numpy import save as to_bytes

    path = Path(path)
    model = identity(session)
    tensors, kv_dtype = cache_tensors(session.cache, session.backend)
    if session.pending:
        tensors["pending_frames"] = np.stack([f for f, _ in session.pending])
    meta = dict(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), model=model,
                model_path=str(Path(session.model_dir).resolve()),
                backend=type(session.backend).__name__, kv_dtype=kv_dtype,
                kv_quantization=_quantization(session.cache),
                config=dataclasses.asdict(session.config), fps=session.fps,
                state=session_state(session))
    meta["sha256"] = _checksum(tensors, meta)
    data = to_bytes(tensors, metadata={"format": FORMAT, "version": str(VERSION),
                                       "kv_quantization": json.dumps(meta["kv_quantization"]),
                                       "infinipot": json.dumps(meta)})
    _write_atomic(path, data)
    return path


def cache_tensors(cache, backend) -> tuple[dict, str]:
    """Every layer's live rows as the host tensors of a memory file (`{layer}.{name}`, _host_rows),
    and the compute dtype's name."""
    tensors, kv_dtype = {}, None
    for i, layer in enumerate(cache.layers):
        rows, kv_dtype = _host_rows(backend, layer)
        tensors.update({f"{i}.{name}": np.ascontiguousarray(a) for name, a in rows.items()})
    return tensors, kv_dtype


def _host_rows(backend, layer) -> tuple[dict, str]:
    """A layer's live rows as host arrays: `keys`, `values` (a quantized layer adds
    `keys_scales`, `keys_biases`, `values_scales`, `values_biases`; `keys` is then the packed
    uint32), `slot`, `patch`, `pos`; and the compute dtype's name (bfloat16 travels as uint16)."""
    rows, kv_dtype = layer.rows(), None
    for name in ("keys", "values"):
        stored = rows.pop(name)
        for suffix, array in zip(_PARTS, stored if isinstance(stored, tuple) else (stored,)):
            rows[name + suffix], kv_dtype = backend.to_host_bits(array)  # ends on a compute-dtype array
    return rows, kv_dtype


def _quantization(cache) -> dict | None:
    """How the keys and values are stored: None (the compute dtype) or mlx-lm's affine triple."""
    if not cache.quantized:
        return None
    layer = cache.layers[0]
    return dict(mode="affine", bits=layer.bits, group_size=layer.group_size)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # Ctrl-C included: no temporary file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise MemoryFileError(f"cannot write the memory file {path} ({err.strerror or err}); "
                                  "choose a writable path") from None
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def sweep_temporaries(folder: Path) -> None:
    """Remove the temporary files that a killed session.save left (`.NAME.PID.tmp`,
    _write_atomic's naming) when their process is gone; a running save's file is left alone."""
    for tmp in folder.glob(".*.tmp"):
        match = re.fullmatch(r"\..+\.(\d+)\.tmp", tmp.name)
        if match and not _alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _checksum(tensors: dict, meta: dict) -> str:
    digest = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


# ----- reading ---------------------------------------------------------------------------------
def read(path: str | Path) -> tuple[dict, dict]:
    """(metadata, tensors) of a memory file, checksum and version verified; MemoryFileError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as from_bytes

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MemoryFileError(f"cannot read the memory file {path} ({err.strerror or err}); "
                              "check the path") from None
    try:
        tensors = from_bytes(data)
        header = _header(data)
    except (SafetensorError, ValueError, struct.error) as err:
        raise MemoryFileError(f"{path} is not a readable memory file (truncated or damaged: "
                              f"{str(err).splitlines()[0][:80]}); save it again") from None
    if header.get("format") != FORMAT:
        raise MemoryFileError(f"{path} is a safetensors file but not an infinipot memory; "
                              "pass a file written by --save or session.save()")
    if header.get("version") not in READABLE:
        raise MemoryFileError(f"{path} is a version {header.get('version')} memory file; this "
                              f"infinipot_mlx reads versions {', '.join(READABLE)}: save it again "
                              "with this version")
    try:
        meta = json.loads(header["infinipot"])
    except (KeyError, json.JSONDecodeError):
        raise MemoryFileError(f"{path} has damaged metadata; save it again") from None
    if meta.get("sha256") != _checksum(tensors, meta):
        raise MemoryFileError(f"{path} fails its checksum (the file was changed or damaged "
                              "after it was written); save it again")
    if header["version"] == "1":
        _upgrade_v1(meta, tensors)
    return meta, tensors


def _upgrade_v1(meta: dict, tensors: dict) -> None:
    """Version 1 used the authors' word "frame" for a temporal slot; rename in place."""
    for name in [n for n in tensors if n.endswith(".frame")]:
        tensors[name[: -len("frame")] + "slot"] = tensors.pop(name)
    meta["config"]["block_slots"] = meta["config"].pop("block_frames", None)


def _header(data: bytes) -> dict:
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + length]).get("__metadata__") or {}


def check_backend(meta: dict, backend: str, path) -> None:
    """MemoryFileError when the memory was made on another backend than `backend` (a name in
    protocols.BACKENDS)."""
    from .protocols import BACKENDS

    made = {cls: name for name, (_, cls) in BACKENDS.items()}.get(meta["backend"], meta["backend"])
    if made != backend:
        raise MemoryFileError(f"{path} was made on the {made} backend; open it with --backend {made}")


def summary(meta: dict, path) -> str:
    """One line: what a memory holds (slots, videos, tokens), its model and when it was saved."""
    state = meta["state"]
    names = ", ".join(v["name"] for v in state["videos"]) or "no video"
    span = max(state["slot_seconds"], default=0.0)
    return (f"memory {path}: {state['counters']['slots_seen']} slots of {names} (to {span // 60:02.0f}:"
            f"{span % 60:02.0f}), {state['counters']['compressions']} compressions, model "
            f"{meta['model']['name']}, saved {meta['created']}")


def check_model(meta: dict, identity: dict, path) -> None:
    """MemoryFileError naming both checkpoints when the memory was made by another model."""
    saved = meta["model"]
    for key in ("config_sha256", "weights_sha256"):
        if saved.get(key) != identity.get(key):
            raise MemoryFileError(
                f"{path} was made with the model {saved.get('name')!r} ({key[:-7]} {saved.get(key, '?')[:12]}), "
                f"not with {identity.get('name')!r} ({key[:-7]} {identity.get(key, '?')[:12]}); "
                f"load it with --model pointing at {saved.get('name')!r}")


# ----- the session's state -----------------------------------------------------------------------
_ENCODED = ("pending", "turns", "counters", "frame_hw")  # the parts of StreamSession._STATE that JSON
# cannot hold as they are: queued frames (a tensor, with their stamps), dataclasses, a tuple


def session_state(session) -> dict:
    """The JSON-able state a continued session needs: StreamSession._STATE (the state its
    transactions restore) and the cache's logical position; the cache's arrays go as tensors."""
    state = {name: getattr(session, name) for name in session._STATE if name not in _ENCODED}
    return dict(state, next_position=session.cache.next_position, n_system=session.n_system,
                pending_stamps=[t for _, t in session.pending], frame_hw=session.frame_hw,
                turns=[dataclasses.astuple(t) for t in session.turns],
                counters=dataclasses.asdict(session.counters))


def restore(session, meta: dict, tensors: dict) -> None:
    """Put a verified memory into `session` (opened on the same model and backend)."""
    from ..contract.config import InfiniPotConfig
    from .room import Turn

    if meta["backend"] != type(session.backend).__name__:
        raise MemoryFileError(f"the memory was made on the {meta['backend']} backend, this session runs "
                              f"{type(session.backend).__name__}; open it on the backend that made it")
    state = meta["state"]
    session.config = InfiniPotConfig(**meta["config"])
    session.fps = float(meta["fps"])
    session._clear()  # no system-prompt forward: the memory's cache replaces it
    quantization = meta.get("kv_quantization")
    if quantization and not session.cache.quantized:  # saved after --quantized-kv-start
        session.cache.layers = [layer.to_quantized(group_size=quantization["group_size"], bits=quantization["bits"])
                                for layer in session.cache.layers]
    for i, layer in enumerate(session.cache.layers):
        keys, values = (_stored(session.backend, tensors, f"{i}.{n}", meta["kv_dtype"], quantization)
                        for n in ("keys", "values"))
        layer.set_rows(keys, values, *(tensors[f"{i}.{n}"] for n in ("slot", "patch", "pos")))
    session.cache.next_position, session.n_system = state["next_position"], state["n_system"]
    for name in session._STATE:
        if name not in _ENCODED:  # a memory saved before a name was state keeps _clear's value
            setattr(session, name, state.get(name, getattr(session, name)))
    frames = tensors.get("pending_frames")
    session.pending = [] if frames is None else list(zip(frames, state["pending_stamps"]))
    session.turns = [Turn(*t) for t in state["turns"]]
    session.counters = type(session.counters)(**state["counters"])  # StreamStats
    session.frame_hw = None if state["frame_hw"] is None else tuple(state["frame_hw"])


def _stored(backend, tensors: dict, name: str, kv_dtype: str, quantization: dict | None):
    """`{layer}.keys` or `.values` as the cache stores it: one array in the compute dtype, or
    (packed uint32, scales, biases), bit for bit as saved."""
    if not quantization:
        return backend.from_host_bits(tensors[name], kv_dtype)
    packed = backend.from_host_bits(tensors[name], "uint32")
    return (packed, *(backend.from_host_bits(tensors[name + part], kv_dtype) for part in _PARTS[1:]))
