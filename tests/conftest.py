"""Shared fixtures. Importing infinipot_mlx first loads the optimized BLAS before mlx."""

import infinipot_mlx  # noqa: F401  (must precede any mlx import)
