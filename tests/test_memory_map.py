"""The memory map (evidence.map_figure, memory_map): each second's colour is the share of its
visual tokens the memory keeps (0..1), so older seconds are told apart however whole the
newest block is; several videos are drawn as one titled panel each, on their own time axis."""

import matplotlib
import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.mlx.backend import load_model
from infinipot_mlx.stream.evidence import map_figure, memory_map, retention
from infinipot_mlx.stream.session import StreamSession

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def frames_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def session(tiny_qwen_dir):
    """8 frames a second, 2 a slot: 4 slots (64 visual tokens) a second, 6 s under a cap of 240."""
    model, tok, spec, _ = load_model(str(tiny_qwen_dir))
    s = StreamSession(model, tok, spec, InfiniPotConfig(capacity=240, reserve=40, block_slots=2), fps=8.0)
    s.add_frames(frames_for(48))
    return s


def pixels_at(fig, ax, png, points) -> np.ndarray:
    """(n, 3) RGB in [0, 1] of the saved PNG at data points (x, y) of `ax`."""
    image = plt.imread(png)
    fig.canvas.draw()
    return np.array([image[int(image.shape[0] - y), int(x), :3] for x, y in ax.transData.transform(points)])


def test_older_seconds_are_coloured_by_the_share_they_keep(session, tmp_path):
    (video,) = retention(session)
    assert session.counters.compressions > 3 and list(video.streamed) == [64] * 6
    older = video.seconds[:-1]  # the seconds before the newest block's
    fig = map_figure(session)
    png = tmp_path / "map.png"
    fig.savefig(png)
    ax = next(a for a in fig.axes if a.images)
    viridis = matplotlib.colormaps["viridis"]
    for layer in range(len(session.cache.layers)):
        got = pixels_at(fig, ax, png, [(s + 0.5, layer) for s in older])
        share = video.share[layer, : len(older)]
        np.testing.assert_allclose(got, viridis(share)[:, :3], atol=3 / 255)  # the scale is the share
        kept = video.kept[layer, : len(older)]
        for i in range(len(older)):
            for j in range(len(older)):
                if kept[i] != kept[j]:  # seconds that keep different counts look different
                    assert np.abs(got[i] - got[j]).max() > 0, (layer, older[i], older[j])
    assert len(set(video.kept[0, :-1])) > 1  # the test saw different counts
    plt.close(fig)
    again = memory_map(session, tmp_path / "again.png")
    np.testing.assert_array_equal(plt.imread(again), plt.imread(png))


def test_two_videos_are_two_titled_panels_on_their_own_time(tiny_qwen_dir):
    model, tok, spec, _ = load_model(str(tiny_qwen_dir))
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=240, reserve=40, block_slots=2), fps=2.0)
    for name, seed in (("garden.mp4", 0), ("street.mp4", 1)):
        session.begin_video(name, name=name)
        session.add_frames(frames_for(8, seed))
    session.flush()
    fig = map_figure(session)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["garden.mp4", "street.mp4"]
    assert [list(ax.images[0].get_extent()[:2]) for ax in panels] == [[0, 4], [0, 4]]  # 4 s each, from 0
    plt.close(fig)
