"""The server's memory pool (server/pool.py) charges what a memory's cache has allocated: the
key and value buffers with their spare rows (the cache grows 256 rows at a time), which is
what MLX frees when the memory leaves, not only the live rows (cache.nbytes)."""

import gc

import mlx.core as mx
import numpy as np

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.mlx.backend import load_model
from infinipot_mlx.server.pool import Memory, MemoryPool
from infinipot_mlx.stream.session import StreamSession


def test_the_pool_charges_the_bytes_the_cache_has_allocated(tiny_qwen_dir):
    model, tok, spec, _ = load_model(str(tiny_qwen_dir))
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=300, reserve=64, block_slots=2))
    session.add_frames(np.random.default_rng(0).integers(0, 256, (20, 112, 112, 3), dtype=np.uint8))
    session.flush()
    assert session.cache.n_cached % 256  # spare rows are allocated past the live ones
    pool = MemoryPool(max_bytes=10**9, max_sessions=1)
    memory = Memory("clip", session, ["clip.mp4"], "stream")
    assert pool.put(memory)
    charged, live = pool.snapshot()["memory_bytes"], session.cache.nbytes

    mx.synchronize()
    gc.collect()
    mx.clear_cache()
    held = mx.get_active_memory()
    session.cache = None  # the memory's keys and values go: MLX frees what they had allocated
    gc.collect()
    mx.clear_cache()
    freed = held - mx.get_active_memory()
    assert charged == freed == memory.nbytes
    assert charged > live  # what counting the live rows alone would have charged
