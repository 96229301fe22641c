"""The order of what streams (issue 23): an ask is atomic with respect to frames another
thread adds (locking.py), and a question does not end the video it interrupts: the rest of
the file continues as the same video (its name, content hash and times), on Qwen2.5-VL and
Qwen3-VL, and an interrupted block keeps the name of the video it was opening."""

import re
import threading

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.mlx.backend import load_model
from infinipot_mlx.stream.memory_file import content_hash
from infinipot_mlx.stream.session import StreamSession

QUESTION = "What moved in the video?"


def frames_for(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def qwen(tiny_qwen_dir):
    return load_model(str(tiny_qwen_dir))


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3_vl_dir):
    return load_model(str(tiny_qwen3_vl_dir))


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return load_model(str(tiny_llava_dir))


def session_of(loaded, **config) -> StreamSession:
    model, tok, spec, _ = loaded
    return StreamSession(model, tok, spec, InfiniPotConfig(**config), fps=2.0)


def ask_with_frames_in_the_window(session, side: int) -> str:
    """Ask, and release a frame thread between ask() and the answer's first read (where the
    old ask had let go of the lock after closing the video and before the prefill)."""
    window, done, errors = threading.Event(), threading.Event(), []

    def frame_thread():
        window.wait()
        try:
            session.add_frames(frames_for(4, side, seed=1))  # a whole block: it opens a segment
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
        done.set()

    thread = threading.Thread(target=frame_thread)
    thread.start()
    reply = session.ask(QUESTION, max_tokens=2)
    window.set()
    assert done.wait(timeout=300) and not errors, errors
    answer = "".join(reply)
    thread.join()
    return answer


def test_frames_from_another_thread_never_land_inside_a_question(qwen):
    session = session_of(qwen, capacity=100_000, block_slots=2)
    session.add_frames(frames_for(4, 112))
    ask_with_frames_in_the_window(session, 112)
    assert session.video_start is None  # no segment left open behind the answer
    prompt = session.prompt_text()
    before = prompt[: prompt.index(QUESTION)]
    assert before.count("<video:") == 2  # both blocks come before the question, in a closed segment
    assert before.count("<|vision_start|>") == before.count("<|vision_end|>") == 1
    after_answer = session.cache.next_position
    session.add_frames(frames_for(4, 112, seed=2))
    assert session.video_start >= after_answer  # the next block comes after the answer
    assert session.counters.frames_seen == 12


def test_positions_stay_monotone_when_frames_race_a_question(llava):
    """LLaVA-OV records each row's 1-D position: in arrival order they only grow."""
    session = session_of(llava, capacity=100_000, block_slots=2)
    session.add_frames(frames_for(2, 98))
    ask_with_frames_in_the_window(session, 98)
    session.add_frames(frames_for(2, 98, seed=2))  # the stream goes on after the answer
    assert session.counters.compressions == 0
    for layer in session.cache.layers:
        for head in layer.positions:
            assert np.all(np.diff(head) > 0), head


def stream_file_with_a_question(session, path, ask_after: int = 1):
    """Stream the file as chat does (begin_video, then its blocks with their timestamps),
    asking a question after `ask_after` blocks; returns the timestamps streamed."""
    video = session.open_video(path)
    session.begin_video(path)
    blocks = list(video.blocks(session.frames_per_block))
    assert len(blocks) > ask_after
    for i, block in enumerate(blocks):
        if i == ask_after:
            assert "".join(session.ask(QUESTION, max_tokens=2)) is not None
        session.add_frames(block.frames, block.timestamps)
    session.flush()
    return np.concatenate([b.timestamps for b in blocks])


def test_a_question_does_not_end_the_video_it_interrupts(qwen, static_events_mp4):
    session = session_of(qwen, capacity=100_000, block_slots=2)
    stamps = stream_file_with_a_question(session, static_events_mp4)
    assert session.videos == [dict(name="static_events.mp4", content=content_hash(static_events_mp4))]
    assert set(session.slot_video) == {0}
    np.testing.assert_allclose(session.slot_seconds, stamps[::2][: len(session.slot_seconds)])
    session.record_evidence = True
    "".join(session.ask("And then?", max_tokens=1))
    assert {m.video for m in session.evidence} == {"static_events.mp4"}


def test_times_without_timestamps_go_on_after_a_question(qwen):
    """Frames sampled at fps = 2 (2 frames a slot: a slot a second) keep counting seconds."""
    session = session_of(qwen, capacity=100_000, block_slots=2)
    session.add_frames(frames_for(4, 112))
    "".join(session.ask(QUESTION, max_tokens=2))
    session.add_frames(frames_for(4, 112, seed=1))
    assert session.slot_seconds == [0.0, 1.0, 2.0, 3.0] and session.slot_video == [0, 0, 0, 0]
    assert len(session.videos) == 1


def test_qwen3_vl_timestamps_go_on_after_a_question(qwen3, static_events_mp4):
    """The slot timestamps the model reads (<t seconds>) keep rising across the question."""
    session = session_of(qwen3, capacity=100_000, block_slots=2)
    seen, splice = [], session.adapter.splice_slot_text

    def record(visual, texts):  # the real splice, with the texts it is given noted
        seen.extend(session.adapter.tokenizer.decode(lead) for lead, _ in texts)
        return splice(visual, texts)

    session.adapter.splice_slot_text = record
    stream_file_with_a_question(session, static_events_mp4, ask_after=2)
    seconds = [float(re.search(r"<([\d.]+) seconds>", text).group(1)) for text in seen]
    assert len(seconds) == session.counters.slots_seen > 4
    assert np.all(np.diff(seconds) > 0), seconds
    assert len(session.videos) == 1 and set(session.slot_video) == {0}


def test_an_interrupted_block_keeps_the_name_of_its_video(qwen, static_events_mp4):
    session = session_of(qwen, capacity=100_000, block_slots=2)
    video = session.open_video(static_events_mp4)
    session.begin_video(static_events_mp4)
    first = next(iter(video.blocks(session.frames_per_block)))
    encode = session.adapter.encode_slots

    def interrupted(frames):  # Ctrl-C in the vision tower of the video's first block
        session.adapter.encode_slots = encode
        raise KeyboardInterrupt

    session.adapter.encode_slots = interrupted
    with pytest.raises(KeyboardInterrupt):
        session.add_frames(first.frames, first.timestamps)
    assert session.videos == [] and len(session.pending) == len(first.frames)  # queued, as before
    session.flush()
    assert session.videos == [dict(name="static_events.mp4", content=content_hash(static_events_mp4))]
