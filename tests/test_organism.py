"""The model organism: generator, prompt/positions, training forward, hub-layout checkpoint."""

import json

import numpy as np
import pytest

from infinipot_mlx import organism
from infinipot_mlx.organism import data


def test_same_seed_same_episode_and_different_seeds_differ():
    f1, fps, qa1 = organism.make_episode(3)
    f2, _, qa2 = organism.make_episode(3)
    f3, _, _ = organism.make_episode(4)
    assert f1.shape == (32, 84, 84, 3) and f1.dtype == np.uint8 and fps == 2.0
    assert np.array_equal(f1, f2) and qa1 == qa2
    assert not np.array_equal(f1, f3)


def test_train_val_test_seeds_are_disjoint():
    train = {data.split_seed("train", i) for i in (0, 999_999)}
    test = {data.split_seed("test", i) for i in (0, 999_999)}
    val = {data.split_seed("val", i) for i in (0, 999_999)}
    assert max(train) < min(test) and max(test) < min(val)
    assert data.split_seed("pan", 5) == data.split_seed("test", 5)
    with pytest.raises(ValueError):
        data.split_seed("test", 10**6)
    with pytest.raises(ValueError):
        data.split_seed("nope", 0)


def _mean_colour(frames, ev):
    row, col = divmod(ev.cell, data.GRID)
    y0, x0 = row * data.CELL_PX + ev.offset[0], col * data.CELL_PX + ev.offset[1]
    patch = frames[ev.start, y0:y0 + ev.size, x0:x0 + ev.size]
    return patch[data._shape_mask(ev.shape, ev.size)].mean(0)  # (3,)


@pytest.mark.parametrize("index", range(12))
def test_answers_match_the_rendered_events(index):
    ep = data.episode_for("test", index)
    answers = {qtype: (q, a) for q, a, qtype in ep.qa}
    events = ep.events
    assert answers["count"][1] == data.NUMBERS[len(events)]
    assert answers["first"][1] == events[0].colour and answers["last"][1] == events[-1].colour
    assert [e.start for e in events] == sorted(e.start for e in events)
    for a, b in zip(events, events[1:]):
        assert a.start + a.length <= b.start  # no overlap in time
    for ev in events:  # each event is drawn with its colour, inside its cell, in its frames
        assert np.abs(_mean_colour(ep.frames, ev) - data.COLOURS[ev.colour]).max() < 12
        assert ev.offset[0] + ev.size <= data.CELL_PX and ev.offset[1] + ev.size <= data.CELL_PX
        assert ev.start + ev.length <= len(ep.frames)
    by_colour = {e.colour: e for e in events}
    q, where = answers["where"]
    assert any(q == data.QUESTIONS["where"].format(colour=c) and where == data.CELLS[e.cell]
               for c, e in by_colour.items())
    q, present = answers["present"]
    colour = next(c for c in data.COLOURS if q == data.QUESTIONS["present"].format(colour=c))
    assert present == ("yes" if colour in by_colour else "no")


def test_before_and_after_name_the_neighbouring_event():
    checked = 0
    for index in range(30):
        ep = data.episode_for("test", index)
        colours = [e.colour for e in ep.events]
        for q, a, qtype in ep.qa:
            if qtype in ("before", "after"):
                c = next(c for c in colours if q == data.QUESTIONS[qtype].format(colour=c))
                k = colours.index(c)
                assert a == colours[k - 1 if qtype == "before" else k + 1]
                checked += 1
    assert checked > 10


def test_every_question_type_occurs_and_answers_are_answer_words():
    seen = set()
    for index in range(20):
        for _, answer, qtype in organism.make_episode(index)[2]:
            seen.add(qtype)
            assert answer in organism.ANSWER_WORDS
    assert seen == set(organism.QTYPES)


def test_stress_splits():
    main = data.episode_for("test", 2)
    rep = data.episode_for("repeat", 2)
    first, last = rep.events[0], rep.events[-1]
    assert len(rep.events) >= 2 and (first.colour, first.cell) == (last.colour, last.cell)
    assert dict((t, a) for _, a, t in rep.qa)["count"] == data.NUMBERS[len(rep.events)]
    flicker = data.episode_for("flicker", 2).frames.reshape(32, -1).mean(1)
    assert flicker.std() > 3 * main.frames.reshape(32, -1).mean(1).std()
    for split in ("pan", "texture"):  # the background moves: consecutive frames differ more
        moved = np.abs(np.diff(data.episode_for(split, 2).frames.astype(float), axis=0)).mean()
        assert moved > 1.4 * np.abs(np.diff(main.frames.astype(float), axis=0)).mean()
    with pytest.raises(ValueError):
        data.generate(0, data.VideoOptions(variant="zoom"))


def test_token_events_mark_the_event_cells():
    ep = data.episode_for("test", 1)
    grid = data.token_events(ep.events, 32)
    assert len(grid) == 16 and all(len(row) == 9 for row in grid)
    marked = {(s, k) for s, row in enumerate(grid) for k, c in enumerate(row) if c}
    expected = {(f // 2, e.cell) for e in ep.events for f in range(e.start, e.start + e.length)}
    assert marked == expected


@pytest.fixture(scope="module")
def tiny():
    from infinipot_mlx.organism import model as om

    tok = om.build_tokenizer()
    config = om.make_config(tok, {"num_hidden_layers": 1, "vision_depth": 1})
    return om, tok, config, om.build_model(config)


def test_prompt_tokens_and_absolute_time_positions(tiny):
    om, tok, _, _ = tiny
    for word in organism.ANSWER_WORDS:
        assert len(tok.encode(word).ids) == 1
    builder = om.PromptBuilder(tok)
    _, _, qa = organism.make_episode(0)
    p = builder.build(16, qa)
    at, V = p.video_at, 16 * 9
    assert p.ids[at - 1] == tok.token_to_id("<|vision_start|>")
    assert p.ids[at:at + V] == [tok.token_to_id("<|video_pad|>")] * V
    assert p.ids[at + V] == tok.token_to_id("<|vision_end|>")
    t, h, w = p.positions[:, at:at + V].reshape(3, 16, 9)
    assert (t[:, 0] == at + 2 * np.arange(16)).all()  # fps 2: 1 s per slot, 2 positions per s
    assert (h[0] == at + np.repeat(np.arange(3), 3)).all() and (w[0] == at + np.tile(np.arange(3), 3)).all()
    assert p.positions[0, at + V] == at + 30 + 1  # text after the video: max + 1
    for i, tid in p.targets:
        assert p.ids[i + 1] == tid
    answer_text = tok.decode([p.ids[i + 1] for i, _ in p.answers])
    assert answer_text.split() == [a for _, a, _ in qa] or answer_text == "".join(a for _, a, _ in qa)


def test_batched_vision_equals_the_vision_tower(tiny):
    import mlx.core as mx

    om, _, _, model = tiny
    frames = np.stack([organism.make_episode(i, n_frames=8)[0] for i in range(2)])
    pixels, grid = om.pixels_for(frames)
    ref = model.vision_tower(pixels, grid, output_hidden_states=False)
    assert mx.abs(om.vision_features(model.vision_tower, pixels, grid) - ref).max().item() < 1e-5


def test_checkpoint_round_trip_through_mlx_vlm_load(tiny, tmp_path):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm import load

    from infinipot_mlx.organism.save import save_checkpoint

    om, tok, config, model = tiny
    out = save_checkpoint(model, tok, config, tmp_path / "ckpt")
    names = mx.load(str(out / "model.safetensors")).keys()
    assert all(n.startswith(("visual.", "model.")) for n in names)
    loaded, _ = load(str(out))
    ours, theirs = dict(tree_flatten(model.parameters())), dict(tree_flatten(loaded.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[k], theirs[k]) for k in ours)


def test_shipped_weights_are_a_hub_layout_checkpoint():
    folder = organism.weights_dir()
    assert (folder / "config.json").exists(), "the organism checkpoint ships with the package"
    from mlx_vlm import load
    from tokenizers import Tokenizer

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and "text_config" not in config
    assert config["vision_config"]["model_type"] == "qwen2_5_vl" and "hidden_size" in config
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.get_vocab_size() == config["vocab_size"]
    assert tok.token_to_id("<|video_pad|>") == config["video_token_id"]
    assert tok.token_to_id("<|vision_start|>") == config["vision_start_token_id"]
    for name in ("tokenizer_config.json", "preprocessor_config.json",
                 "video_preprocessor_config.json", "generation_config.json"):
        assert (folder / name).exists()
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    assert size < 8 * 2**20
    model, processor = load(str(folder))
    assert model.config.video_token_id == config["video_token_id"]


def test_training_questions_are_shuffled_and_balanced():
    firsts, present = set(), []
    for index in range(20):
        ep = data.episode_for("test", index)
        qa = data.training_questions(ep, index)
        assert qa == data.training_questions(ep, index)
        firsts.add(qa[0][2])
        present += [a for _, a, t in qa if t == "present"]
        colours = {e.colour for e in ep.events}
        for q, a, t in qa:
            if t == "where":
                e = next(e for e in ep.events if q == data.QUESTIONS["where"].format(colour=e.colour))
                assert a == data.CELLS[e.cell]
            if t == "present":
                c = next(c for c in data.COLOURS if q == data.QUESTIONS["present"].format(colour=c))
                assert a == ("yes" if c in colours else "no")
    assert len(firsts) >= 4 and present.count("yes") == present.count("no")


def test_independent_turns_see_only_the_video(tiny):
    import mlx.core as mx

    om, tok, _, model = tiny
    builder, pad, no = om.PromptBuilder(tok), tok.token_to_id("<|endoftext|>"), tok.token_to_id("no")
    frames, _, qa = organism.make_episode(5, n_frames=8)
    aux = builder.aux_targets(data.token_events(data.episode_for("test", 5, n_frames=8).events, 8))

    def answer_logits(prompt):
        prompt.aux = aux
        batch = om.make_batch([prompt], frames[None], pad, no)
        idx = mx.array([[i for i, _ in prompt.answers]])
        return om.logits_at(model, om.hidden_states(model, batch), idx)[0]  # (n_answers, vocab)

    together = answer_logits(builder.build(4, qa[:3], independent=True))
    for k in range(3):
        alone = answer_logits(builder.build(4, qa[k:k + 1]))
        assert mx.abs(together[k] - alone[0]).max().item() < 1e-4


def test_asked_targets_sit_at_each_named_colour(tiny):
    """Prompt.asked: every colour a question names, at its own token, targets the cell where
    that colour was shown or "no"; the batch carries them and the loss reads them."""
    import mlx.core as mx

    om, tok, _, model = tiny
    builder = om.PromptBuilder(tok)
    ep = data.episode_for("test", 2, n_frames=8)
    cells = {e.colour: data.CELLS[e.cell] for e in ep.events}
    p = builder.build(4, ep.qa, cells=cells)
    named = [(q, c) for q, _, _ in ep.qa for c in data.COLOURS if f" {c} " in q]
    assert len(p.asked) == len(named) >= 2  # where and present always name one
    for (i, target), (_, colour) in zip(p.asked, named):
        assert tok.id_to_token(p.ids[i]) == "\u0120" + colour
        assert tok.id_to_token(target) == cells.get(colour, "no")
    assert builder.build(4, ep.qa).asked == []  # without cells, no targets
    span = om.PromptBuilder(tok, asked_span=True).build(4, ep.qa, cells=cells)
    answer_at = {i for i, _ in span.answers}
    for i, target in span.asked:  # from the colour on, never at the answer's own position
        assert i not in answer_at and i not in {j for j, _ in span.targets}
    assert len(span.asked) > len(p.asked) and set(p.asked) <= set(span.asked)
    p.aux = builder.aux_targets(data.token_events(ep.events, 8))
    batch = om.make_batch([p], ep.frames[None], tok.token_to_id("<|endoftext|>"), tok.token_to_id("no"))
    assert batch.q_w.sum().item() == len(p.asked)
    base = om.loss_fn(model, batch, 0.0)
    with_asked = om.loss_fn(model, batch, 0.0, asked_weight=1.0)
    assert mx.abs(with_asked - base).item() > 0
