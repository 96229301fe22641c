"""What the parity tests share: MLX-against-reference assertions on two traces, and the
whole-prompt inputs of a Qwen-family video question for one-shot forwards."""

import numpy as np

from infinipot_mlx.cli.parity import Trace, compare
from infinipot_mlx.contract.pixels import qwen_patchify
from infinipot_mlx.contract.positions import next_after, text_positions

TOL = 1e-4  # logits, float32 (the parity contract)


def assert_parity(mlx: Trace, ref: Trace, tol: float = TOL) -> None:
    """The same kept (slot, patch) sets at every compression, logits within tol at every
    question and decode step, and the same greedy tokens."""
    assert len(mlx.kept_log) == len(ref.kept_log)
    for step, (m_layers, r_layers) in enumerate(zip(mlx.kept_log, ref.kept_log)):
        for m, r in zip(m_layers, r_layers, strict=True):  # (H, K, 2) (slot, patch) per head
            np.testing.assert_array_equal(m, r, err_msg=f"compression {step + 1}")
    assert len(mlx.tokens) == len(ref.tokens)
    for q in range(len(mlx.tokens)):
        np.testing.assert_allclose(mlx.question_logits[q], ref.question_logits[q], atol=tol, rtol=0)
        assert mlx.tokens[q] == ref.tokens[q]
        np.testing.assert_allclose(mlx.step_logits[q], ref.step_logits[q], atol=tol, rtol=0)
    assert compare(mlx, ref).ok


def qwen_one_shot_inputs(tokenizer, spec, frames: np.ndarray, question: str, video_positions):
    """input_ids, mm_token_type_ids, pixel_values, grid (t, h, w) and the positions of the whole
    prompt; video_positions(start, n_slots, grid) gives the video's (3, N) M-RoPE positions."""
    pieces = spec.pieces
    prefix = tokenizer.encode(pieces.system.format(system="You are a helpful assistant.")
                              + pieces.user_open + pieces.video_open, add_special_tokens=False)
    suffix = tokenizer.encode(pieces.video_close + question + pieces.question_close, add_special_tokens=False)
    pixels, (gt, gh, gw) = qwen_patchify(frames, spec.image_mean, spec.image_std)
    grid = (gh // 2, gw // 2)
    n_video = gt * grid[0] * grid[1]
    ids = prefix + [tokenizer.convert_tokens_to_ids("<|video_pad|>")] * n_video + suffix
    types = [0] * len(prefix) + [2] * n_video + [0] * len(suffix)  # 2 = video
    video = video_positions(len(prefix), gt, grid)
    positions = np.concatenate([text_positions(0, len(prefix)), video,
                                text_positions(next_after(video), len(suffix))], axis=1)  # (3, L)
    return ids, types, pixels, (gt, gh, gw), positions


def load_both(path):
    """(MLX (model, tokenizer, spec, path), reference (model, tokenizer, spec, path)) of a checkpoint."""
    from infinipot_mlx.mlx import backend as mlx_backend
    from infinipot_mlx.reference import backend as ref_backend

    return mlx_backend.load_model(str(path)), ref_backend.load_model(str(path), device="cpu")


def stream_uncapped(loaded, frames, backend: str, block_slots: int, question: str, fps: float):
    """Stream frames with a cap that keeps everything, ask; (session, answer)."""
    from infinipot_mlx import InfiniPotConfig
    from infinipot_mlx.stream.session import StreamSession

    model, tok, spec, _ = loaded
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=100_000, block_slots=block_slots),
                            backend, fps=fps)
    session.add_frames(frames)
    answer = "".join(session.ask(question, max_tokens=6))
    assert session.counters.compressions == 0
    return session, answer


def run_both(loaded, frames, questions: list[str], max_tokens: int, fps: float, **config):
    """The same frames and questions through an MLX and a reference session: (Trace, Trace)."""
    from infinipot_mlx import InfiniPotConfig
    from infinipot_mlx.cli.parity import run_session, split_frames
    from infinipot_mlx.stream.session import StreamSession

    cfg = InfiniPotConfig(**config)
    (mm, mt, ms, _), (rm, rt, rs, _) = loaded
    mlx = StreamSession(mm, mt, ms, cfg, "mlx", fps=fps, record_kept=True)
    ref = StreamSession(rm, rt, rs, cfg, "reference", fps=fps, record_kept=True)
    chunks = split_frames(frames, len(questions), cfg.block_slots * 2)
    return run_session(mlx, chunks, questions, max_tokens), run_session(ref, chunks, questions, max_tokens)
