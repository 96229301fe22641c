"""Ranked answers across a library (library/search.py, `library ask`): sorted by score, a
moment inside its video, --json and --top, thumbnails of the moment's frame, and no video
read or streamed again to answer."""

import json
import shutil

import cv2
import numpy as np
import pytest

from infinipot_mlx.cli.library import main
from infinipot_mlx.library import Catalogue
from infinipot_mlx.library.search import Ranker, expected_answer, search
from infinipot_mlx.organism import CELLS
from infinipot_mlx.stream.memory_file import read
from videos import index_level, moving_shapes_video, sized_video, static_events_video

BUDGET = ["--kv-budget", "700"]
FPS = 10.0  # clip.mp4: frame i at i / FPS s, its left quarter at index_level(i)


@pytest.fixture(scope="module")
def lib(tiny_qwen_dir, tmp_path_factory):
    """(library folder, videos folder): three short videos indexed with the tiny checkpoint."""
    videos = tmp_path_factory.mktemp("search_videos")
    moving_shapes_video(videos / "shapes.mp4", n=30, fps=10.0)  # 3 s
    static_events_video(videos / "events.mp4", n=40, fps=4.0)  # 10 s
    sized_video(videos / "clip.mp4", 176, 144, n=40, fps=FPS)  # 4 s
    root = tmp_path_factory.mktemp("search_library")
    assert main(["index", str(videos), "--library", str(root), "--model", str(tiny_qwen_dir), *BUDGET]) == 0
    return root, videos


DURATION = {"shapes.mp4": 3.0, "events.mp4": 10.0, "clip.mp4": 4.0}


def test_hits_are_ranked_by_score_with_moments_inside_their_videos(lib):
    progress = []
    hits = search(lib[0], "What moved?", top=5, on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert [h.rank for h in hits] == [1, 2, 3] and sorted(h.name for h in hits) == sorted(DURATION)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert 0 < h.score <= 1 and 0 < h.share <= 1 and h.thumbnail is None
        assert 0 <= h.seconds < DURATION[h.name] and h.path == str(lib[1] / h.name)
    assert [h.name for h in search(lib[0], "What moved?", top=1)] == [hits[0].name]


def test_a_yes_no_question_ranks_by_p_yes_and_an_answer_can_be_expected(lib):
    assert expected_answer("Was there a red shape?") == "yes" and expected_answer("Where was it?") is None
    yes = search(lib[0], "Was there a red shape?", top=3)
    same = search(lib[0], "Was there a red shape?", top=3, expect="yes")
    assert [(h.name, h.score) for h in yes] == [(h.name, h.score) for h in same]
    other = search(lib[0], "Was there a red shape?", top=3, expect="no")
    assert [h.score for h in other] != [h.score for h in yes]


def test_answers_come_from_the_memories_alone(lib, tmp_path):
    """With the videos gone the library still answers, and the vision tower never ran: the
    session's counters are the memory's own, as saved."""
    root = tmp_path / "copy"
    shutil.copytree(lib[0], root)
    with Catalogue(root) as catalogue:
        for e in catalogue.entries("done"):
            catalogue.rename(e, e.name, str(tmp_path / "gone" / e.name))
        saved = {e.name: read(catalogue.memory_path(e))[0]["state"]["counters"] for e in catalogue.entries()}
    ranker = Ranker(root)
    hits = ranker.ask("What moved?", top=3, thumbnails=True)
    assert len(hits) == 3 and all(h.thumbnail is None for h in hits)  # no file to draw from
    (session,) = ranker.sessions.values()
    last = sorted(saved)[-1]  # the last memory loaded (in name order)
    assert session.counters.frames_seen == saved[last]["frames_seen"]
    assert session.counters.seconds["vision"] == saved[last]["seconds"]["vision"]
    assert ranker.timings.memories == 3 and ranker.timings.load > 0 and ranker.timings.score > 0


def test_thumbnails_are_jpegs_of_the_moments_frame(lib):
    (hit,) = search(lib[0], "What moved?", video="clip", thumbnails=True)
    assert hit.thumbnail.endswith(".jpg") and hit.thumbnail.startswith(str(lib[0] / "thumbnails"))
    image = cv2.imread(hit.thumbnail)
    assert image.shape == (144, 176, 3)
    frame = round(hit.seconds * FPS)
    assert abs(float(np.mean(image[:, 5:30])) - index_level(frame)) < 4  # the left quarter names the frame
    made = sorted((lib[0] / "thumbnails").iterdir())
    stamp = made[0].stat().st_mtime_ns
    (again,) = search(lib[0], "What moved?", video="clip", thumbnails=True)
    assert again.thumbnail == hit.thumbnail and sorted((lib[0] / "thumbnails").iterdir()) == made
    assert made[0].stat().st_mtime_ns == stamp  # cached: not written again


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ask_prints_the_ranking_and_json(lib, capsys):
    code, out, err = run(capsys, "ask", "What moved?", "--library", lib[0], "--top", 2)
    assert code == 0, err
    rows = [line.split(None, 4) for line in out.splitlines()]
    assert [r[0] for r in rows] == ["1.", "2."] and all(r[1] in DURATION for r in rows)
    assert all(len(r[2]) == 5 and r[2][2] == ":" for r in rows)  # mm:ss
    code, out, err = run(capsys, "ask", "What moved?", "--library", lib[0], "--json", "--top", 1,
                         "--thumbnails")
    (hit,) = json.loads(out)
    assert code == 0 and set(hit) == {"rank", "name", "path", "seconds", "answer", "score", "share", "thumbnail"}
    assert hit["rank"] == 1 and hit["thumbnail"].endswith(".jpg")
    code, out, err = run(capsys, "ask", "What moved?", "--library", lib[0], "--top", 1, "--thumbnails")
    assert code == 0 and out.splitlines()[1].strip() == hit["thumbnail"]


def test_the_library_benchmark_runs_small(tmp_path, capsys):
    """bench library on 5 organism videos: every question has one answering video (checked
    again here from the episodes), its rank is within the library, and the figure is drawn."""
    from infinipot_mlx.bench.library import unique_questions, write_videos
    from infinipot_mlx.cli.bench import main as bench

    out = tmp_path / "bench"
    assert bench(["library", "--n", "5", "--libraries", "1", "--questions", "4", "--sizes", "2",
                  "--timing-queries", "1", "--out", str(out)]) == 0
    record = json.loads((out / "library.json").read_text())
    episodes = write_videos(out / "work" / "videos_0", 5, 0)  # cached: the files the run indexed
    assert [q["question"] for q in record["questions"]] == [q["question"] for q in unique_questions(episodes, 4)]
    for q in record["questions"]:
        holds = [name for name, ep in episodes.items() if answers(ep.events, q)]
        assert holds == [q["video"]] and 1 <= q["rank"] <= 5
    assert [t["memories"] for t in record["timing"]] == [2, 5]
    assert record["random_expected"]["hit@1"] == 0.2 and 0 <= record["random"]["mrr"]["p_search_by_chance"] <= 1
    assert (out / "library.png").stat().st_size > 0
    assert bench(["library", "--n", "1"]) == 2 and "--n must be at least 2" in capsys.readouterr().err


def answers(events, q) -> bool:
    """Whether a video with these events answers q: a shape of the named colour in the
    expected cell (where), or the expected colour right after / before the named one."""
    if q["qtype"] == "where":
        return any(f" {e.colour} shape" in q["question"] and CELLS[e.cell] == q["expect"] for e in events)
    pairs = list(zip(events, events[1:]))
    pairs = pairs if q["qtype"] == "after" else [(b, a) for a, b in pairs]
    return any(f" {named.colour} one" in q["question"] and other.colour == q["expect"] for named, other in pairs)
