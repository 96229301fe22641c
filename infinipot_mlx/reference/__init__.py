"""PyTorch reference backend: the same scoring, selection and cache as the MLX side."""

__all__ = ["select_tokens"]


def __getattr__(name):
    if name == "select_tokens":
        from .select import select_tokens

        return select_tokens
    raise AttributeError(f"module 'infinipot_mlx.reference' has no attribute {name!r}")
