"""The MLX backend: scoring, selection, cache, adapters and backend hooks on mlx arrays and
mlx-vlm models, the mirror of infinipot_mlx/reference (same file names, same names inside),
plus memory.py, the Metal/unified-memory probe of the budget."""
