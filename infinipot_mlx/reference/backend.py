"""The PyTorch reference backend of a StreamSession (session.py): transformers' models.

The mirror of mlx/backend.py (TorchBackend <-> MLXBackend). It imports no mlx, so it runs
where only torch and transformers are installed (CUDA, CPU, NVIDIA Jetson):

    from infinipot_mlx.reference.backend import load
    session = load("Qwen/Qwen2.5-VL-7B-Instruct", InfiniPotConfig(capacity=6144), device="cuda")
    session.add_frames(frames)            # (n, H, W, 3) uint8, any number of times
    for piece in session.ask("What happened?"):
        print(piece, end="")

Memory figures (TorchBackend.memory): on CUDA, bytes of tensors allocated by torch on the
device (torch.cuda.memory_allocated) and their peak since reset_peak_memory. On CPU, the
process's resident set size (RSS: the model, torch, Python, everything) and the highest
RSS seen at a sync point since reset_peak_memory (0, 0 where /proc is not available).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..stream.answer import eos_ids
from ..contract.config import DEFAULT_FPS, InfiniPotConfig
from ..contract.model_path import DEFAULT_MODELS, resolve_model_path
from ..stream.session import StreamSession
from ..contract.specs import load_spec
from .adapters import adapter_class
from .cache import StreamCache
from .select import select_tokens

DEFAULT_MODEL = DEFAULT_MODELS["reference"]
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTENTION = "sdpa"  # no flash-attn needed; sdpa matches MLX to ~1e-6 in float32


class TorchBackend:
    """The array-library hooks the shared streaming loop needs, for PyTorch (protocols.Backend).

    Args:
        device: where memory is measured and work is synchronized; None (the default) takes
            the device of the model given to `adapter`.
    """

    select_tokens = staticmethod(select_tokens)
    eos_ids = staticmethod(eos_ids)  # (tokenizer, spec) -> sorted stop ids, shared (answer.py)

    def __init__(self, device: torch.device | str | None = None):
        self.device = None if device is None else torch.device(device)
        self._peak_rss = 0

    def adapter(self, model, tokenizer, spec):
        """The model type's reference adapter (reference/adapters/, found through specs.MODEL_TYPES)."""
        adapter = adapter_class(spec.model_type)(model, tokenizer, spec)
        if self.device is None:
            self.device = torch.device(adapter.device)
        return adapter

    def new_cache(self, num_layers: int) -> StreamCache:
        """An empty cache in the compute dtype (the session quantizes it: LayerStack.maybe_quantize)."""
        return StreamCache(num_layers)

    def sync(self, output, cache: StreamCache | None = None) -> None:
        """Wait for queued GPU work so timings and memory are real (CPU: sample the RSS)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        else:
            self._peak_rss = max(self._peak_rss, _rss_bytes())

    def to_numpy(self, x) -> np.ndarray:
        """A host numpy copy (float16/bfloat16 logits become float32)."""
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype != torch.float64:
            x = x.float()
        return x.numpy()

    def to_host_bits(self, x) -> tuple[np.ndarray, str]:
        """A bit-exact host copy and its dtype's name (bfloat16 travels as uint16)."""
        name = str(x.dtype).rpartition(".")[2]
        x = x.detach().cpu().contiguous()
        return (x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()), name

    def from_host_bits(self, a: np.ndarray, name: str):
        """The inverse of to_host_bits, on this backend's device."""
        a = np.ascontiguousarray(a)
        x = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if name == "bfloat16" else \
            torch.from_numpy(a).to(getattr(torch, name))
        return x.to(self.device)

    def make_sampler(self, temperature: float, top_p: float):
        """logits (V,) -> token id (a tensor or int; int() gives the id); greedy at temperature
        0, else softmax(logits / T) with top-p."""
        if temperature <= 0:
            return lambda logits: torch.argmax(logits)
        return lambda logits: _sample(logits, temperature, top_p)

    def start(self, *arrays) -> None:
        """Nothing to start: torch computes eagerly (the MLX mirror begins async work)."""

    def memory(self) -> tuple[int, int]:
        """(active, peak) bytes: CUDA tensor bytes, or process RSS on CPU (module docstring)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device), torch.cuda.max_memory_allocated(self.device)
        rss = _rss_bytes()
        self._peak_rss = max(self._peak_rss, rss)
        return rss, self._peak_rss

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._peak_rss = _rss_bytes()


def _sample(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    """One token from softmax(logits / temperature), restricted to the top-p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, -1) - sorted_probs >= top_p  # mass before a token
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return int(order[torch.multinomial(sorted_probs, 1)].item())
    return int(torch.multinomial(probs, 1).item())


def _rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def resolve_device(device: str = "auto") -> torch.device:
    """auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N; ValueError otherwise."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} was asked for, but this PyTorch build sees no CUDA GPU; "
                             "use --device cpu (or auto)")
        return torch.device(device)
    raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def resolve_dtype(dtype: str | None) -> torch.dtype | str:
    """float32, float16 or bfloat16; None keeps the checkpoint's dtype ("auto")."""
    if dtype is None:
        return "auto"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _check_not_mlx_quantized(path: Path) -> None:
    """MLX-quantized folders (mlx-community/*-4bit) hold weights transformers cannot read."""
    with open(path / "config.json") as f:
        config = json.load(f)
    if "quantization" in config and "quantization_config" not in config:
        raise ValueError(f"{path} is an MLX-quantized checkpoint; the reference backend needs the "
                         f"original Hugging Face weights (for example {DEFAULT_MODEL})")


def seed(n: int) -> None:
    """Seed the sampler (greedy decoding needs none)."""
    torch.manual_seed(n)


def load_model(path_or_repo: str, device: str = "auto", dtype: str | None = None):
    """(model, tokenizer, spec, path) through transformers' from_pretrained.

    Args:
        path_or_repo: local folder or hub repo id with transformers-format weights.
        device: auto, cpu, cuda (or cuda:N).
        dtype: float32, float16, bfloat16, or None for the checkpoint's dtype.
    """
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from ..errors import UserError
    from ..contract.model_path import require_weights

    try:  # these checks raise ValueError for input the user can fix
        torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
        path = resolve_model_path(path_or_repo)
        spec = load_spec(path)
        _check_not_mlx_quantized(path)
        require_weights(path, ("*.safetensors", "pytorch_model*.bin"))
    except UserError:
        raise
    except ValueError as err:  # resolve_device, resolve_dtype, _check_not_mlx_quantized
        raise UserError(str(err)) from None
    # the model_type's *ForConditionalGeneration (Qwen2.5-VL, LLaVA-OneVision)
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch_dtype, attn_implementation=ATTENTION)
    model = model.to(torch_device).eval().requires_grad_(False)
    # AutoTokenizer, not AutoProcessor: importing mlx-vlm patches AutoProcessor
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer, spec, path


def load(path_or_repo: str = DEFAULT_MODEL, config: InfiniPotConfig | None = None, fps: float = DEFAULT_FPS,
         device: str = "auto", dtype: str | None = None, **kwargs) -> StreamSession:
    """Load a checkpoint with transformers and open a reference StreamSession on it.

    Args:
        path_or_repo: local folder or hub repo id of a supported model (HF weights).
        config: compression settings (default InfiniPotConfig()).
        fps: sampling rate of the frames given to add_frames.
        device: auto, cpu, cuda (or cuda:N).
        dtype: float32, float16, bfloat16, or None for the checkpoint's dtype.
        **kwargs: system_prompt, record_kept, check_cap (see session.StreamSession).
    """
    model, tokenizer, spec, path = load_model(path_or_repo, device=device, dtype=dtype)
    return StreamSession(model, tokenizer, spec, config, TorchBackend(), fps=fps, model_dir=path, **kwargs)
