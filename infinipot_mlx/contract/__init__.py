"""The contract both backends implement, as plain Python and numpy (no mlx, no torch).

config (InfiniPotConfig, the method registry), plan (capacity arithmetic), budget (memory
budget -> capacity), specs (per-model facts, the model registry), candidates (the host half
of selection), rows (the cache's row labels), positions (RoPE positions), pixels (the pixel
path), model_path (where a checkpoint lives). docs/ALGORITHM.md is the text of it.
"""
