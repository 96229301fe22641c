"""The organism's prompts and padded batches as numpy arrays (no MLX, no torch).

The prompt is the one StreamSession streams (specs.ChatPieces, the Qwen chat template); see
organism.model. Both trainers (organism.train in MLX, organism.train_torch in PyTorch) and
the train-step benchmark build their batches here, so they feed the same token ids,
positions, pixels and targets.

Notation: B videos, F frames, S = F / 2 slots, T = 9 tokens per slot, V = S * T video
tokens, L sequence length, A answer tokens, Q asked-colour targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..contract.pixels import qwen_patchify
from ..contract.positions import mrope_video_positions, next_after, text_positions
from ..contract.specs import DEFAULT_SYSTEM, ChatPieces
from ..hub import checkpoints
from . import data

FPS = 2.0
PIECES = ChatPieces()


@dataclass
class Prompt:
    """One tokenized conversation: ids (L,), positions (3, L), loss targets."""

    ids: list[int]
    positions: np.ndarray  # (3, L) int64
    video_at: int  # index of the first <|video_pad|>
    targets: list[tuple[int, int]] = field(default_factory=list)  # (index predicting, token id)
    answers: list[tuple[int, str]] = field(default_factory=list)  # (index predicting, qtype)
    aux: np.ndarray | None = None  # (3, V) ids each video token learns (PromptBuilder.aux_targets)
    asked: list[tuple[int, int]] = field(default_factory=list)  # (a question's colour token, its cell or "no")
    turn_of: np.ndarray | None = None  # (L,) turn index of independent turns, -1 shared prefix


class PromptBuilder:
    """Token ids and positions of the session's prompt for a video and its questions."""

    def __init__(self, tokenizer, tokens_per_second: float = 2.0, fps: float = FPS, asked_span: bool = False):
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
        self.enc = enc
        self.head = enc(PIECES.system.format(system=DEFAULT_SYSTEM)) + enc(PIECES.user_open) + enc(
            PIECES.video_open)
        self.close = enc(PIECES.video_close)
        self.user_open, self.q_close = enc(PIECES.user_open), enc(PIECES.question_close)
        self.eos, self.a_close = enc(PIECES.eos), enc(PIECES.answer_close)
        self.video_id = tokenizer.token_to_id("<|video_pad|>")
        self.word_id = {w: enc(w)[0] for w in data.ANSWER_WORDS}
        # a colour inside a question is another token (" red", not "red"): the id it has there
        self.question_word_id = {c: single_token(enc, " " + c) for c in data.COLOURS}
        self.second_per_grid, self.tps = 2 / fps, tokens_per_second
        self.asked_span = asked_span

    def build(self, n_slots: int, qa: list[tuple[str, str, str]], grid=(3, 3),
              independent: bool = False, cells: dict[str, str] | None = None) -> Prompt:
        """Prompt for a video of n_slots slots followed by the question-answer turns.

        independent: every turn is laid out as the first question after the video (same
        start position, no "<|im_start|>user" reopening) and tagged in Prompt.turn_of, so
        a mask can hide earlier turns from it (no answer can be read off earlier answers).
        cells: colour -> cell word of the video's shapes; each colour a question names then
        gets an auxiliary target at its token (Prompt.asked): that cell word, or "no" (with
        asked_span, at every token from it to the one before the answer's).
        """
        colour_of = {tid: c for c, tid in self.question_word_id.items()}
        ids, pos = list(self.head), [text_positions(0, len(self.head))]
        video_at, n_video = len(ids), n_slots * grid[0] * grid[1]
        pos.append(mrope_video_positions(video_at, 0, n_slots, grid, self.second_per_grid, self.tps))
        ids += [self.video_id] * n_video + self.close
        pos.append(text_positions(next_after(pos[-1]), len(self.close)))
        prompt = Prompt(ids, np.zeros((3, 0), np.int64), video_at)
        turn_of, start = [-1] * len(ids), next_after(pos[-1])
        for k, (question, answer, qtype) in enumerate(qa):
            reopen = self.user_open if k and not independent else []
            turn = reopen + self.enc(question) + self.q_close
            if cells is not None:  # from the colour to the token before the answer's
                named = [(j, colour_of[tid]) for j, tid in enumerate(turn) if tid in colour_of]
                for j, colour in named[-1:] if self.asked_span else named:
                    stop = len(turn) - 1 if self.asked_span else j + 1
                    prompt.asked += [(len(ids) + k, self.word_id[cells.get(colour, "no")]) for k in range(j, stop)]
            answer_ids = self.enc(answer) + self.eos
            for j, tid in enumerate(answer_ids):
                prompt.targets.append((len(ids) + len(turn) + j - 1, tid))
            prompt.answers.append((len(ids) + len(turn) - 1, qtype))
            turn += answer_ids + self.a_close[len(self.eos):]
            pos.append(text_positions(start if independent else next_after(pos[-1]), len(turn)))
            ids, turn_of = ids + turn, turn_of + [k if independent else -1] * len(turn)
        prompt.ids, prompt.positions = ids, np.concatenate(pos, axis=1)
        prompt.turn_of = np.array(turn_of)
        return prompt

    def aux_targets(self, token_colours: list[list[str]]) -> np.ndarray:
        """(3, V) ids: each video token's colour answer word ("no" if none), its cell word, and
        its colour as a question says it (" red"; "no" if none)."""
        colours = [c for slot in token_colours for c in slot]
        colour = [self.word_id[c or "no"] for c in colours]
        cell = [self.word_id[data.CELLS[k]] for slot in token_colours for k in range(len(slot))]
        asked = [self.question_word_id[c] if c else self.word_id["no"] for c in colours]
        return np.array([colour, cell, asked], np.int32)


def single_token(enc, text: str) -> int:
    """The one token id of text; ValueError if the tokenizer splits it."""
    ids = enc(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens; the organism needs it as one")
    return ids[0]


def pixel_rows(frames: np.ndarray, mean=checkpoints.CLIP_MEAN, std=checkpoints.CLIP_STD):
    """(B, F, H, W, 3) uint8 -> pixel rows (B*S*H/14*W/14, 1176) float32, grid_thw (B, 3) int32."""
    rows, grids = zip(*(qwen_patchify(f, mean, std) for f in frames))
    return np.concatenate(rows), np.array(grids, np.int32)


def batch_arrays(prompts: list[Prompt], frames: np.ndarray, pad_id: int, no_id: int,
                 event_weight: float = 1.0, background_weight: float = 0.2) -> dict[str, np.ndarray]:
    """Pad prompts into numpy arrays (model.Batch's fields). frames (B, F, H, W, 3) uint8;
    no_id: the "no" token. "mask" is (B, 1, L, L) bool, or absent when plainly causal."""
    B, L = len(prompts), max(len(p.ids) for p in prompts)
    A = max(len(p.targets) for p in prompts)
    ids = np.full((B, L), pad_id, np.int32)
    pos = np.zeros((3, B, L), np.int32)
    t_idx, t_ids, t_w = (np.zeros((B, A), dt) for dt in (np.int32, np.int32, np.float32))
    for b, p in enumerate(prompts):
        n = len(p.ids)
        ids[b, :n], pos[:, b, :n] = p.ids, p.positions
        pos[:, b, n:] = p.positions[:, -1:] + 1 + np.arange(L - n)
        for a, (i, tid) in enumerate(p.targets):
            t_idx[b, a], t_ids[b, a], t_w[b, a] = i, tid, 1.0
    aux = np.stack([p.aux for p in prompts])  # (B, 3, V)
    aux_w = np.where(aux[:, 0] == no_id, background_weight, event_weight).astype(np.float32)
    Q = max(1, max(len(p.asked) for p in prompts))
    q_idx, q_ids, q_w = (np.zeros((B, Q), dt) for dt in (np.int32, np.int32, np.float32))
    for b, p in enumerate(prompts):
        for a, (i, tid) in enumerate(p.asked):
            q_idx[b, a], q_ids[b, a], q_w[b, a] = i, tid, 1.0
    pixels, grid = pixel_rows(frames)
    out = dict(pixels=pixels, grid_thw=grid, ids=ids, pos=pos, t_idx=t_idx, t_ids=t_ids, t_w=t_w,
               aux=aux, aux_w=aux_w, q_idx=q_idx, q_ids=q_ids, q_w=q_w,
               video_at=np.array(prompts[0].video_at))
    mask = turn_mask(prompts, L)
    if mask is not None:
        out["mask"] = mask
    return out


def turn_mask(prompts: list[Prompt], L: int) -> np.ndarray | None:
    """(B, 1, L, L) bool causal mask that also hides other independent turns; None when
    there are none (plainly causal)."""
    if all((p.turn_of < 0).all() for p in prompts):
        return None
    turn = np.full((len(prompts), L), 10**6)  # padding: its own group
    for b, p in enumerate(prompts):
        turn[b, :len(p.turn_of)] = p.turn_of
    same = (turn[:, :, None] == turn[:, None, :]) | (turn[:, None, :] == -1)  # (B, L, L)
    return (same & np.tril(np.ones((L, L), bool)))[:, None]


def episode_prompts(builder: PromptBuilder, seeds: list[int], opts: data.VideoOptions,
                    rich: bool = False, independent: bool = False) -> tuple[list[Prompt], np.ndarray]:
    """Prompts (with aux targets) and frames (B, F, H, W, 3) of the episodes of `seeds`.

    rich: data.training_questions instead of the test set's; independent: every question
    sees only the video, not the earlier turns (see PromptBuilder.build).
    """
    eps = [data.generate(s, opts) for s in seeds]
    prompts = []
    for seed, ep in zip(seeds, eps):
        qa = data.training_questions(ep, seed) if rich else ep.qa
        cells = {e.colour: data.CELLS[e.cell] for e in ep.events}
        prompts.append(builder.build(opts.n_frames // 2, qa, independent=independent, cells=cells))
        prompts[-1].aux = builder.aux_targets(data.token_events(ep.events, opts.n_frames))
    return prompts, np.stack([ep.frames for ep in eps])
