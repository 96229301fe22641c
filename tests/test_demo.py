"""The offline demo and the accuracy benchmark on the shipped organism (tier 3)."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from infinipot_mlx.bench import accuracy
from infinipot_mlx.errors import UserError
from infinipot_mlx.organism.session import first_word, organism_config


def test_organism_cap_leaves_the_requested_share_and_never_less_than_two_slots():
    cfg = organism_config(32, 0.25, pinned=20)  # 16 slots x 9 tokens = 144 video tokens
    assert cfg.capacity == 20 + cfg.reserve + 36 and cfg.block_slots == 1
    tiny = organism_config(32, 0.1, pinned=20)  # 14.4 tokens asked, 18 (two slots) is the floor
    assert tiny.capacity == 20 + tiny.reserve + 18
    assert organism_config(32, 0.5, method="full").capacity is None


def test_first_word():
    assert first_word(" Red.") == "red" and first_word("") == "" and first_word("two shapes") == "two"


def test_demo_streams_under_the_cap_and_prints_answers_beside_the_truth():
    """The README's main job exactly as written, default flags: every answer printed is the
    model's own under the cap (the same session run here in-process gives the same text),
    beside the answer with the full cache and the true answer of the video's events, with
    right/wrong and the closing counts (right under the cap, right with the full cache, and
    how often they agree) true."""
    from infinipot_mlx.organism import make_episode
    from infinipot_mlx.organism.session import DEMO_BLOCK_SLOTS, open_organism

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", "--demo"],
                         input="", capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    frames, _, qa = make_episode(0, split="test")  # --seed 0, the demo's default
    session = open_organism()  # the demo's default: infinipot_v under its cap
    block = 2 * DEMO_BLOCK_SLOTS
    for i in range(0, len(frames), block):
        session.add_frames(frames[i:i + block])
    session.flush()
    replies = ["".join(session.ask(q, max_tokens=256, temperature=0.0, top_p=1.0)) for q, _, _ in qa]
    full = open_organism(method="full")  # the same video with every token kept
    for i in range(0, len(frames), block):
        full.add_frames(frames[i:i + block])
    full.flush()
    fulls = [first_word("".join(full.ask(q, max_tokens=256, temperature=0.0, top_p=1.0))) for q, _, _ in qa]
    assert [line[3:] for line in lines if line.startswith("Q: ")] == [q for q, _, _ in qa]
    assert [line[3:] for line in lines if line.startswith("A: ")] == replies
    assert all(replies) and all(fulls), lines  # every question got a word, not an error or nothing
    said = [first_word(r) for r in replies]
    mark = {True: "right", False: "wrong"}
    shown = [line.split() for line in lines if line.startswith("   full cache: ")]
    assert shown == [["full", "cache:", f, "truth:", t, "(cap", f"{mark[s == t]},", "full", f"{mark[f == t]})"]
                     for s, f, (_, t, _) in zip(said, fulls, qa)]
    right, right_full = sum(s == t for s, (_, t, _) in zip(said, qa)), sum(f == t for f, (_, t, _) in zip(fulls, qa))
    agree = sum(s == f for s, f in zip(said, fulls))
    assert (f"under the cap {right}/{len(qa)} right, with the full cache {right_full}/{len(qa)}; the two agree on "
            f"{agree}/{len(qa)}; cached {session.cache.n_cached} tokens, {session.counters.compressions} compressions"
            ) in out.stdout
    assert session.counters.compressions > 0 and "error" not in out.stderr
    assert "streaming" in out.stderr and "mem" in out.stderr  # progress bar with the memory figure


def test_accuracy_bench_writes_every_field_and_holds_the_budget(tmp_path):
    args = argparse.Namespace(n=2, seed_offset=5, budgets="1.0,0.25", methods="full,infinipot_v,uniform",
                              splits="test", out=tmp_path, weights=None)
    assert accuracy.run(args) == 0
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert {"environment", "summary", "records", "budgets", "methods"} <= result.keys()
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    records = result["records"]
    assert len(records) == 2 * 2 * 3
    for r in records:
        assert len(r["correct"]) == len(r["qtypes"]) >= 5
        if r["method"] != "full":
            assert r["visual_tokens"] <= max(round(r["budget"] * 144), 18)
        if r["budget"] == 1.0:
            assert r["compressions"] == 0  # the whole video fits: nothing is dropped
    row = next(s for s in result["summary"] if s["method"] == "uniform" and s["qtype"] == "all")
    assert {"accuracy", "ci95", "vs_infinipot_v", "vs_infinipot_v_ci95", "n_videos"} <= row.keys()
    assert all(isinstance(r["evidence_first_hit"], bool) for r in records)  # every video asks "first"
    for row in (s for s in result["summary"] if s["qtype"] == "all"):
        hits = [r["evidence_first_hit"] for r in records if (r["method"], r["budget"]) == (row["method"], row["budget"])]
        assert row["evidence_first_hit_rate"] == sum(hits) / len(hits)


def test_accuracy_bench_reads_a_given_checkpoint(tmp_path):
    """--weights: another organism checkpoint folder (here a copy of the shipped one, so the
    records must equal the default run's); a folder without config.json is refused up front."""
    import shutil

    from infinipot_mlx.organism import weights_dir

    copy = shutil.copytree(weights_dir(), tmp_path / "copy")
    runs = {}
    for name, weights in (("shipped", None), ("copy", copy)):
        args = argparse.Namespace(n=1, seed_offset=3, budgets="0.25", methods="full,infinipot_v",
                                  splits="test", out=tmp_path / name, weights=weights)
        assert accuracy.run(args) == 0
        runs[name] = json.loads((tmp_path / name / "accuracy.json").read_text())
    assert runs["copy"]["weights"] == str(copy) and runs["shipped"]["weights"] == "shipped"
    assert runs["copy"]["records"] == runs["shipped"]["records"]
    bad = argparse.Namespace(n=1, seed_offset=0, budgets="0.25", methods="full", splits="test",
                             out=tmp_path / "bad", weights=tmp_path)
    with pytest.raises(UserError, match="not a checkpoint folder"):
        accuracy.run(bad)
