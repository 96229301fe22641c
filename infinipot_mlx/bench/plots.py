"""Line plots for the benchmarks: one line per method, one panel per measure (matplotlib Agg).

A series is a list of point dicts; getters pull x and y out of a point and return None
where a point has no value (that point is skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Getter = Callable[[dict], float | None]


@dataclass
class Panel:
    """One subplot: a y getter, its label, optional horizontal reference lines."""

    ylabel: str
    y: Getter
    hlines: dict[str, float] = field(default_factory=dict)  # label -> y
    logy: bool = False


@dataclass
class Line:
    """One line: its points, label and matplotlib style."""

    label: str
    points: list[dict]
    style: dict = field(default_factory=dict)


def line_panels(path: Path, lines: list[Line], x: Getter, xlabel: str, panels: list[Panel],
                title: str, logx: bool = False) -> Path:
    """Draw the panels side by side, every line in every panel, and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(7.0, 5.2 * len(panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in lines:
            xy = [(x(p), panel.y(p)) for p in line.points]
            xy = [(a, b) for a, b in xy if a is not None and b is not None]
            if xy:
                ax.plot(*zip(*xy), marker="o", markersize=3, label=line.label, **line.style)
        for label, value in panel.hlines.items():
            ax.axhline(value, color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", va="bottom")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if panel.logy else "linear")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
