"""Benchmarks: `python -m infinipot_mlx.bench <subcommand> [--out DIR] ...`.

Each subcommand is a module of this package with add_arguments(parser) and run(args);
SUBCOMMANDS maps its name to the module. Benchmarks measure; tests never assert timings.
cli/bench.py imports only the chosen subcommand's module (its help line is read from the
module's docstring without importing it), so `--help` and a bad flag answer without mlx.
"""

SUBCOMMANDS = {
    "select": "infinipot_mlx.bench.select",  # one compression of Qwen2.5-VL-7B-shaped KV
    "stream": "infinipot_mlx.bench.stream",  # a random Qwen2.5-VL (or --model-type) streaming, per method
    "kv": "infinipot_mlx.bench.kv",  # the cache and compression alone at 7B KV shape
    "accuracy": "infinipot_mlx.bench.accuracy",  # the organism's answers under a cap, per method
    "startup": "infinipot_mlx.bench.startup",  # CLI start-up: --help, a bad flag, imports, first frame
    "library": "infinipot_mlx.bench.library",  # ranked search over a library of organism videos
    "library-launch": "infinipot_mlx.bench.library_launch",  # indexing on 1 and more ranks (mlx.launch)
    "vs-mlx-vlm": "infinipot_mlx.bench.vs_mlx_vlm",  # peak memory and time vs stock mlx-vlm, per length
    "train-step": "infinipot_mlx.bench.train_step",  # one organism training step, MLX vs torch
}
