"""Interrupts lose nothing: Ctrl-C inside vision, prefill, compression or decode leaves a
session that agrees with itself and goes on exactly as one that was never interrupted.

A KeyboardInterrupt is injected into the real code path of each phase (the vision tower,
one layer's cache update in the middle of a block's prefill, the selection of one layer in
the middle of a compression, one layer in the middle of a decode step); then the same
frames and questions continue, and the logits must equal an uninterrupted session's.
"""

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.mlx.backend import load_model
from infinipot_mlx.stream.session import StreamSession

CONFIG = dict(capacity=160, reserve=40, block_slots=2)  # 16 tokens a slot: compresses every block


def frames_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load_model(str(tiny_qwen_dir))


def new_session(tiny) -> StreamSession:
    model, tokenizer, spec, _ = tiny
    return StreamSession(model, tokenizer, spec, InfiniPotConfig(**CONFIG), fps=2.0, check_cap=True)


class Once:
    """Wrap `fn` so that its `nth` qualifying call raises KeyboardInterrupt (then behaves)."""

    def __init__(self, fn, nth: int = 1, when=lambda *a, **k: True):
        self.fn, self.nth, self.when, self.calls = fn, nth, when, 0

    def __call__(self, *args, **kwargs):
        if self.when(*args, **kwargs):
            self.calls += 1
            if self.calls == self.nth:
                raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


def state(session) -> dict:
    """Everything that must agree after an interrupt."""
    layers = session.cache.layers
    return dict(
        n=[layer.n_cached for layer in layers], next_position=session.cache.next_position,
        frames=[layer.slot_ids.copy() for layer in layers], counters=(
            session.counters.frames_seen, session.counters.slots_seen, session.counters.compressions),
        segment=(session.video_start, session.segment_slots), pending=len(session.pending),
        transcript=list(session.transcript), turns=list(session.turns))


def assert_consistent(session) -> None:
    layers = session.cache.layers
    assert len({layer.n_cached for layer in layers}) == 1
    seen = session.counters.slots_seen
    for layer in layers:
        visual = layer.slot_ids[layer.slot_ids >= 0]
        assert visual.size == 0 or visual.max() < seen  # no frame id from a block that never landed


def interrupt_block(session, phase: str):
    """Arm a KeyboardInterrupt in `phase` of the next block."""
    if phase == "vision":
        session.adapter.encode_slots = Once(session.adapter.encode_slots)
    elif phase == "prefill":  # layer 1 of 2: layer 0 has already appended the block
        layer = session.cache.layers[1]
        layer.update_and_fetch = Once(layer.update_and_fetch, when=lambda k, v: k.shape[2] > 1)
    elif phase == "compression":  # layer 1: layer 0 has already been compressed
        session.backend.select_tokens = Once(session.backend.select_tokens,
                                             when=lambda *a, layer_idx, **k: layer_idx == 1)


@pytest.mark.parametrize("phase", ["vision", "prefill", "compression"])
def test_interrupted_block_rolls_back_and_the_stream_continues_exactly(tiny, phase):
    frames = frames_for(12)
    calm, hit = new_session(tiny), new_session(tiny)
    calm.add_frames(frames[:8])
    hit.add_frames(frames[:8])
    before = state(hit)
    interrupt_block(hit, phase)
    with pytest.raises(KeyboardInterrupt):
        hit.add_frames(frames[8:12])
    after = state(hit)
    assert after.pop("pending") == 4  # the interrupted block's frames stay queued
    before.pop("pending")
    for a, b in zip(before.pop("frames"), after.pop("frames")):
        np.testing.assert_array_equal(a, b)
    assert before == after
    assert_consistent(hit)
    hit.flush()  # the queued frames: the block that was interrupted
    calm.add_frames(frames[8:12])
    assert calm.counters.compressions == 1  # the interrupted block was one that compresses first
    for session in (calm, hit):
        "".join(session.ask("What moved?", max_tokens=4))
        session.add_frames(frames_for(4, seed=1))
        "".join(session.ask("And then?", max_tokens=4))
    np.testing.assert_array_equal(hit.question_logits, calm.question_logits)
    assert state(hit)["counters"] == state(calm)["counters"]


def test_interrupted_decode_keeps_the_answer_so_far_and_the_next_turn_is_exact(tiny):
    frames = frames_for(8)
    calm, hit = new_session(tiny), new_session(tiny)
    for s in (calm, hit):
        s.add_frames(frames)
    reply = hit.ask("What moved?", max_tokens=10)
    next(reply)  # the question, then the first answer token fed
    layer = hit.cache.layers[1]  # the third token's decode step is interrupted in layer 1
    layer.update_and_fetch = Once(layer.update_and_fetch, nth=2, when=lambda k, v: k.shape[2] == 1)
    with pytest.raises(KeyboardInterrupt):
        list(reply)
    assert hit.open_answer is None and hit.stop_reason == "interrupted"  # the answer was closed
    assert_consistent(hit)
    fed = hit.counters.tokens_decoded  # tokens fed before the interrupted step
    assert fed == 2
    "".join(calm.ask("What moved?", max_tokens=fed))  # the same tokens, the last one fed at the close
    for s in (calm, hit):
        assert s.prompt_text().endswith("<|im_end|>\n")
        "".join(s.ask("And then?", max_tokens=3))
    np.testing.assert_allclose(hit.question_logits, calm.question_logits, atol=1e-5)
    assert hit.cache.next_position == calm.cache.next_position
    assert hit.prompt_text() == calm.prompt_text()


def test_interrupted_question_is_not_asked(tiny):
    session = new_session(tiny)
    session.add_frames(frames_for(4))
    reply = session.ask("What moved?", max_tokens=3)  # the question is prefilled at the first next()
    before = state(session)
    layer = session.cache.layers[1]
    layer.update_and_fetch = Once(layer.update_and_fetch, when=lambda k, v: k.shape[2] > 1)
    with pytest.raises(KeyboardInterrupt):
        next(reply)
    after = state(session)
    for a, b in zip(before.pop("frames"), after.pop("frames")):
        np.testing.assert_array_equal(a, b)
    assert before == after and session.open_answer is None
    "".join(session.ask("What moved?", max_tokens=3))  # asked again, it is answered once
    assert session.prompt_text().count("What moved?") == 1
    assert session.prompt_text().endswith("<|im_end|>\n")
