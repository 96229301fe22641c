"""Tier 3: the MLX StreamSession on the tiny Qwen2.5-VL checkpoint (float32)."""

import mlx.core as mx
import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.contract.pixels import qwen_patchify
from infinipot_mlx.contract.positions import mrope_video_positions, next_after, text_positions
from infinipot_mlx.mlx.backend import load, load_model

FPS = 2.0
QUESTION = "What moved in the video?"


def frames_for(n: int, seed: int = 0, size: int = 112) -> np.ndarray:
    """n random RGB frames (n, size, size, 3) uint8; size a multiple of 28."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load_model(str(tiny_qwen_dir))


def session_for(tiny, **config) -> "object":
    from infinipot_mlx.stream.session import StreamSession

    model, tokenizer, spec, _ = tiny
    return StreamSession(model, tokenizer, spec, InfiniPotConfig(**config), fps=FPS, record_kept=True)


def one_shot_inputs(tiny, frames: np.ndarray, question: str):
    """input_ids, pixel_values, grid and our positions of the whole prompt, built directly."""
    model, tok, spec, _ = tiny
    pieces = spec.pieces
    prefix = tok.encode(pieces.system.format(system="You are a helpful assistant.") + pieces.user_open
                        + pieces.video_open, add_special_tokens=False)
    suffix = tok.encode(pieces.video_close + question + pieces.question_close, add_special_tokens=False)
    pixels, (gt, gh, gw) = qwen_patchify(frames, spec.image_mean, spec.image_std)
    grid = (gh // 2, gw // 2)
    n_video = gt * grid[0] * grid[1]
    video_pad = tok.convert_tokens_to_ids("<|video_pad|>")
    ids = prefix + [video_pad] * n_video + suffix
    pos_prefix = text_positions(0, len(prefix))
    pos_video = mrope_video_positions(len(prefix), 0, gt, grid, 2 / FPS, spec.tokens_per_second)
    pos_suffix = text_positions(next_after(pos_video), len(suffix))
    positions = np.concatenate([pos_prefix, pos_video, pos_suffix], axis=1)  # (3, L)
    return ids, pixels, (gt, gh, gw), positions


def test_blockwise_stream_equals_one_shot_forward(tiny):
    model = tiny[0]
    frames = frames_for(12)
    session = session_for(tiny, capacity=100_000, block_slots=2)  # 3 blocks, no compression
    session.add_frames(frames)
    answer = "".join(session.ask(QUESTION, max_tokens=6))
    assert session.counters.compressions == 0

    ids, pixels, grid, positions = one_shot_inputs(tiny, frames, QUESTION)
    out = model(mx.array([ids]), pixel_values=mx.array(pixels), video_grid_thw=mx.array([grid]),
                position_ids=mx.array(positions[:, None, :].astype(np.int32)))
    one_shot = np.array(out.logits[0, -1])
    np.testing.assert_allclose(session.question_logits, one_shot, atol=1e-4)

    # greedy continuation of the one-shot prompt gives the same answer
    fresh = session_for(tiny, capacity=100_000, block_slots=6)  # one block, other schedule
    fresh.add_frames(frames)
    assert "".join(fresh.ask(QUESTION, max_tokens=6)) == answer


def test_stock_mlx_vlm_positions_differ_in_time(tiny):
    """mlx-vlm's own Qwen2.5-VL get_rope_index drops the time scaling: so in mlx-vlm 0.7.0 (the
    floor, .ci/run's lower-bound run) to 0.7.10 (checked 2026-12-07); a release that fixes it
    fails here, and this test then branches on mlx_vlm's version."""
    model = tiny[0]
    ids, _, grid, ours = one_shot_inputs(tiny, frames_for(8), QUESTION)
    stock, _ = model.language_model.get_rope_index(mx.array([ids]), video_grid_thw=mx.array([grid]))
    stock = np.array(stock)[:, 0]  # (3, L)
    video = np.array(ids) == tiny[1].convert_tokens_to_ids("<|video_pad|>")
    first = int(np.argmax(video))
    T = grid[1] * grid[2] // 4
    # h and w agree; t does not: stock mlx-vlm uses t = slot, the original t = slot * 2
    assert np.array_equal(stock[1:, video], ours[1:, video])
    assert stock[0, first::T][: grid[0]].tolist() == [first + s for s in range(grid[0])]
    assert ours[0, first::T][: grid[0]].tolist() == [first + 2 * s for s in range(grid[0])]


def test_cache_never_exceeds_capacity_and_peak_memory_is_flat(tiny):
    capacity, block = 400, 2
    session = session_for(tiny, capacity=capacity, block_slots=block, reserve=64)
    T = 16  # 112 px frames: 4 x 4 merged tokens per slot
    slots_10x = 10 * capacity // T
    frames = frames_for(2 * slots_10x, seed=1)
    most, peaks = 0, {}
    for start in range(0, len(frames), 2 * block):
        session.add_frames(frames[start:start + 2 * block])
        most = max(most, session.cache.n_cached)
        assert session.cache.n_cached <= capacity - session.config.reserve
        slots = session.counters.slots_seen
        for mult in (2, 10):
            if mult * capacity // T <= slots and mult not in peaks:
                peaks[mult] = mx.get_peak_memory()
    assert session.counters.compressions > 10
    assert most <= capacity
    assert peaks[10] <= peaks[2] * 1.05, peaks
    for layer_sets in session.kept_log[-1]:  # every head keeps the same count
        assert layer_sets.shape[1] == capacity - session.config.reserve - session.cache.n_pinned - block * T


def test_multi_turn_prompt_contains_first_answer(tiny):
    session = session_for(tiny, capacity=600, block_slots=2, reserve=128)
    session.add_frames(frames_for(8))
    first = "".join(session.ask("What is red?", max_tokens=5))
    pinned_after_first = session.cache.n_pinned
    session.add_frames(frames_for(4, seed=3))  # frames may keep arriving after an answer
    second = "".join(session.ask("And then?", max_tokens=5))
    text = session.prompt_text()
    assert text.index(first) < text.index("And then?")
    assert text.count("<|vision_start|>") == 2  # the new frames opened a second video segment
    assert session.cache.n_pinned > pinned_after_first
    pieces = tiny[2].pieces
    assert first and second  # each answer decoded visible text
    assert text.endswith("And then?" + pieces.question_close + second + pieces.answer_close)


def test_ask_validates_and_stops(tiny):
    session = session_for(tiny, capacity=600, block_slots=2, reserve=128)
    session.add_frames(frames_for(4))
    with pytest.raises(ValueError, match="empty"):
        session.ask("   ")
    tok, spec = tiny[1], tiny[2]
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    before = session.cache.n_cached
    answer = "".join(session.ask("Describe it.", max_tokens=3))
    assert session.stop_reason == "max_tokens"
    assert session.counters.tokens_decoded == 2  # the third token is pinned with the closing piece
    # every token is counted: the video's close, the question, 3 answer tokens, the closing piece
    question = spec.pieces.video_close + "Describe it." + spec.pieces.question_close
    assert session.cache.n_cached - before == count(question) + 3 + count(spec.pieces.answer_close)
    longer = session_for(tiny, capacity=600, block_slots=2, reserve=128)  # the same greedy answer,
    longer.add_frames(frames_for(4))  # with room for more: max_tokens is what cut it
    more = "".join(longer.ask("Describe it.", max_tokens=12))
    assert answer and more.startswith(answer) and len(more) > len(answer)


def test_budget_that_cannot_hold_a_block_is_rejected(tiny):
    session = session_for(tiny, capacity=100, block_slots=8, reserve=16)
    with pytest.raises(ValueError, match=r"cap of 100 tokens cannot hold .* 189 tokens needed; raise "
                       r"--kv-budget \(or --memory\), or lower --max-pixels, --block-slots or --reserve"):
        session.add_frames(frames_for(2))


def test_load_rejects_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load(str(tmp_path / "nope"))


def test_stop_strings_cut_the_answer(tiny):
    def streamed():
        session = session_for(tiny, capacity=600, block_slots=2, reserve=128)
        session.add_frames(frames_for(4))
        return session

    free = "".join(streamed().ask("Describe it.", max_tokens=8))
    start = next(i for i in range(1, len(free) - 1) if "\ufffd" not in free[i:i + 2])
    stop = free[start:start + 2]
    cut = "".join(streamed().ask("Describe it.", max_tokens=8, stop=(stop,)))
    assert cut == free[: free.index(stop)]


def test_sampling_is_seeded(tiny):
    def sample(seed):
        mx.random.seed(seed)
        session = session_for(tiny, capacity=600, block_slots=2, reserve=128)
        session.add_frames(frames_for(4))
        return "".join(session.ask("Describe it.", max_tokens=12, temperature=1.5, top_p=0.9))

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(4)}) > 1  # a random tiny model at T=1.5 varies
