"""Turn a memory budget into a KV capacity, before loading anything (pure arithmetic).

    python examples/memory_budget.py MODEL_DIR [BUDGET]      # BUDGET like 6GB or 60%

The weights are estimated from the safetensors files on disk; `chat --memory` measures them
after loading and checks one block's activations on the machine instead. The KV bytes per
token are the same in both: the cache holds the model's compute dtype, which both read with
budget.compute_dtype_bytes (here from the files' headers, there from the loaded model).
"""

import json
import sys
from pathlib import Path

from infinipot_mlx.contract.budget import checkpoint_dtype_bytes, parse_budget, plan_from_config
from infinipot_mlx.contract.specs import DEFAULT_FRAME_PIXELS, load_spec

model_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "path/to/Qwen2.5-VL-7B-Instruct-4bit")
budget = parse_budget(sys.argv[2] if len(sys.argv) > 2 else "6GB", total_bytes=16 * 10**9)
config = json.loads((model_dir / "config.json").read_text())
spec = load_spec(model_dir)
weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
tokens_per_slot = DEFAULT_FRAME_PIXELS // spec.pixels_per_token**2 if spec.token_grid is None \
    else spec.token_grid[0] * spec.token_grid[1]
plan = plan_from_config(config, budget, weights, tokens_per_slot=tokens_per_slot, block_slots=8,
                        reserve=512, n_pinned=32, dtype_bytes=checkpoint_dtype_bytes(model_dir))
print(plan.line())
print(f"capacity {plan.capacity} tokens per layer: InfiniPotConfig(capacity={plan.capacity})")
