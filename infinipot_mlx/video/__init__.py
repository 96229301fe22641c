"""Video input: source (OpenCV/PyAV frames from a file, camera or URL, sized for the model,
with their own timestamps) and reader (decoding on a thread; live sources keep real time).

`from infinipot_mlx.video import VideoSource` (before 0.3 a module) still works, with a
DeprecationWarning: import infinipot_mlx.video.source.
"""


def __getattr__(name):
    import importlib
    import warnings

    source = importlib.import_module(f"{__name__}.source")
    if hasattr(source, name) and not name.startswith("__"):
        warnings.warn(f"infinipot_mlx.video.{name} is deprecated; import it from infinipot_mlx.video.source",
                      DeprecationWarning, stacklevel=2)
        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
