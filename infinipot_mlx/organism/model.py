"""The organism's model: a tiny Qwen2.5-VL on mlx-vlm's classes, its prompts and checkpoint.

The prompt is the one StreamSession streams (specs.ChatPieces, the Qwen chat template):
system, "<|im_start|>user\\n<|vision_start|>", the video's S*T <|video_pad|> tokens,
"<|vision_end|>", then turns "question<|im_end|>\\n<|im_start|>assistant\\n" + answer +
"<|im_end|>\\n" (later turns reopen with "<|im_start|>user\\n"). Positions are the session's:
M-RoPE with absolute time (positions.mrope_video_positions, fps 2), text after the video at
max + 1. The model is trained with exactly these tokens and positions.

Notation: B videos, F frames, S = F / 2 slots, T = 9 tokens per slot, V = S * T video
tokens, L sequence length, E hidden size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_vlm.models.qwen2_5_vl.vision import apply_rotary_pos_emb_vision

from ..hub import checkpoints
from ..hub.tokenizer import DEFAULT_CORPUS
from ..contract.pixels import qwen_patchify
from ..contract.positions import mrope_video_positions, next_after, text_positions
from ..contract.specs import DEFAULT_SYSTEM, ChatPieces
from . import data

SIZES = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, vision_depth=2, vision_hidden_size=64, vision_num_heads=4,
             vision_intermediate_size=192)
VOCAB_SIZE = 512
FPS = 2.0
PIECES = ChatPieces()


def corpus() -> list[str]:
    """Tokenizer training text: every prompt piece, question and answer word, many times."""
    lines = [PIECES.system.format(system=DEFAULT_SYSTEM), *DEFAULT_CORPUS]
    for template in data.QUESTIONS.values():
        lines += [template.format(colour=c) for c in data.COLOURS]
    return lines * 4 + list(data.ANSWER_WORDS) * 50


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE over corpus(); every answer word must be one token."""
    tok = checkpoints.build_tokenizer(vocab_size, "qwen2_5_vl", corpus())
    long = [w for w in data.ANSWER_WORDS if len(tok.encode(w).ids) != 1]
    if long:
        raise ValueError(f"answer words {long} are not single tokens; raise vocab_size")
    return tok


def make_config(tokenizer, sizes: dict | None = None) -> dict:
    """config.json (hub layout) with tied embeddings, for SIZES overridden by `sizes`."""
    config = checkpoints.qwen2_5_vl_config(tokenizer, **{**SIZES, **(sizes or {})})
    config["tie_word_embeddings"] = True
    return config


def build_model(config: dict):
    """mlx_vlm's Qwen2.5-VL Model from a hub config dict, as mlx_vlm.load builds it."""
    from mlx_vlm.models import qwen2_5_vl
    from mlx_vlm.utils import update_module_configs

    config = copy.deepcopy(config)
    config.setdefault("text_config", {})
    model_config = qwen2_5_vl.ModelConfig.from_dict(config)
    model_config = update_module_configs(model_config, qwen2_5_vl, config, ["text", "vision"])
    return qwen2_5_vl.Model(model_config)


def n_params(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


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


def pixels_for(frames: np.ndarray, mean=checkpoints.CLIP_MEAN, std=checkpoints.CLIP_STD):
    """(B, F, H, W, 3) uint8 -> pixel rows (B*S*H/14*W/14, 1176), grid_thw (B, 3)."""
    rows, grids = zip(*(qwen_patchify(f, mean, std) for f in frames))
    return mx.array(np.concatenate(rows)), mx.array(np.array(grids, np.int32))


@dataclass
class Batch:
    """Model inputs and loss targets of B videos with the same frame count."""

    pixels: mx.array  # (B*S*36, 1176)
    grid_thw: mx.array  # (B, 3)
    ids: mx.array  # (B, L) right-padded
    pos: mx.array  # (3, B, L)
    t_idx: mx.array  # (B, A) positions that predict answer tokens
    t_ids: mx.array  # (B, A)
    t_w: mx.array  # (B, A) 1 for real targets, 0 for padding
    aux: mx.array  # (B, 3, V) per-video-token targets (colour or "no", cell, asked colour)
    aux_w: mx.array  # (B, V)
    q_idx: mx.array  # (B, Q) positions of the questions' colour tokens (Prompt.asked)
    q_ids: mx.array  # (B, Q) their targets
    q_w: mx.array  # (B, Q) 1 for real targets, 0 for padding
    video_at: int
    prompts: list[Prompt]
    mask: mx.array | str = "causal"  # or (B, 1, L, L) bool when turns are independent


def make_batch(prompts: list[Prompt], frames: np.ndarray, pad_id: int, no_id: int,
               event_weight: float = 1.0, background_weight: float = 0.2) -> Batch:
    """Pad prompts into arrays. frames (B, F, H, W, 3) uint8; no_id: the "no" token."""
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
    pixels, grid = pixels_for(frames)
    arrays = (ids, pos, t_idx, t_ids, t_w, aux, aux_w, q_idx, q_ids, q_w)
    return Batch(pixels, grid, *(mx.array(x) for x in arrays), prompts[0].video_at, prompts, turn_mask(prompts, L))


def turn_mask(prompts: list[Prompt], L: int) -> mx.array | str:
    """Causal mask that also hides other independent turns; "causal" when there are none."""
    if all((p.turn_of < 0).all() for p in prompts):
        return "causal"
    turn = np.full((len(prompts), L), 10**6)  # padding: its own group
    for b, p in enumerate(prompts):
        turn[b, :len(p.turn_of)] = p.turn_of
    same = (turn[:, :, None] == turn[:, None, :]) | (turn[:, None, :] == -1)  # (B, L, L)
    return mx.array((same & np.tril(np.ones((L, L), bool)))[:, None])  # (B, 1, L, L)


def vision_features(vision_tower, pixels: mx.array, grid_thw: mx.array) -> mx.array:
    """The vision tower's output, computed with one batched attention over all slots.

    Equal to vision_tower(pixels, grid_thw) (tests check it) when one temporal slot's merged
    grid fits in one attention window, as for 84 x 84 frames: every block then attends
    within a slot, the window order is the raster order, and mlx-vlm's per-slot loop of
    attention calls can be one call. Training only; inference uses the module as is.
    (N patches, C*2*14*14) -> (N / 4, E).
    """
    vt, grids = vision_tower, np.array(grid_thw)  # (videos, 3) rows of (t, h, w) patches
    gh, gw = int(grids[0, 1]), int(grids[0, 2])
    window = vt.window_size // vt.patch_size  # window side in patches
    if (grids[:, 1:] != (gh, gw)).any() or max(gh, gw) > window:
        return vision_tower(pixels, grid_thw, output_hidden_states=False)
    slots, P = int(grids[:, 0].sum()), gh * gw  # P patches per slot
    rot = vt.rot_pos_emb(mx.array([[1, gh, gw]]))  # (P, rot_dim)
    x = vt.patch_embed(pixels)  # (slots*P, Ev)
    for blk in vt.blocks:
        a = blk.attn
        qkv = a.qkv(blk.norm1(x)).reshape(slots, P, 3, a.num_heads, -1)
        q, k, v = (qkv[:, :, i] for i in range(3))  # (slots, P, heads, Dv)
        q, k = apply_rotary_pos_emb_vision(q, rot), apply_rotary_pos_emb_vision(k, rot)
        o = mx.fast.scaled_dot_product_attention(
            q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), scale=a.scale)
        x = x + a.proj(o.transpose(0, 2, 1, 3).reshape(slots * P, -1))
        x = x + blk.mlp(blk.norm2(x))
    return vt.merger(x)


def hidden_states(model, batch: Batch, with_vision: bool = False):
    """Vision tower, video features spliced at video_at, LM body. -> (B, L, E).

    with_vision: also return the video features (B, V, E), the LM's input at video tokens.
    """
    at = batch.video_at
    vis = vision_features(model.vision_tower, batch.pixels, batch.grid_thw)  # (B*V, E)
    vis = vis.reshape(batch.ids.shape[0], -1, vis.shape[-1])  # (B, V, E)
    emb = model.language_model.model.embed_tokens(batch.ids)  # (B, L, E)
    emb = mx.concatenate([emb[:, :at], vis, emb[:, at + vis.shape[1]:]], axis=1)
    hidden = model.language_model.model(None, inputs_embeds=emb, mask=batch.mask, position_ids=batch.pos)
    return (hidden, vis) if with_vision else hidden


def logits_at(model, hidden: mx.array, idx: mx.array) -> mx.array:
    """Logits at sequence positions idx (B, A). -> (B, A, vocab)."""
    h = mx.take_along_axis(hidden, idx[..., None], axis=1)  # (B, A, E)
    return model.language_model.model.embed_tokens.as_linear(h)


def word_loss(model, states: mx.array, batch: Batch, rows: tuple[int, int]) -> mx.array:
    """Mean weighted -log p of each video token's words batch.aux[:, rows]. states (B, V, E)."""
    logp = nn.log_softmax(model.language_model.model.embed_tokens.as_linear(states), axis=-1)  # (B, V, vocab)
    targets = batch.aux[:, list(rows)].transpose(0, 2, 1)  # (B, V, 2)
    picked = mx.take_along_axis(logp, targets, axis=-1).mean(-1)  # (B, V)
    return -(picked * batch.aux_w).sum() / batch.aux_w.sum()


def loss_fn(model, batch: Batch, aux_weight: float = 0.5, input_aux_weight: float = 0.0,
            asked_weight: float = 0.0) -> mx.array:
    """Cross-entropy on answer tokens (word and <|im_end|>), plus the auxiliary losses.

    The auxiliary loss asks the LM output at each video token for that token's colour word
    ("no" if none) and cell word, half each: a dense signal that teaches colours and places
    early. Those outputs are never read at inference. The input auxiliary loss asks the video
    features themselves (read through the tied embedding) for the colour as a question says
    it (" red") and the cell word, so a video token enters the LM looking like the words
    that describe it, and a question's colour word can find it by attention from the first
    layer on. The asked loss asks the LM output at each colour a question names for the cell
    where that colour was shown, or "no": the binding "present" and "where" need, trained
    where it happens.
    """
    hidden, vis = hidden_states(model, batch, with_vision=True)
    ce = nn.losses.cross_entropy(logits_at(model, hidden, batch.t_idx), batch.t_ids, reduction="none")
    loss = (ce * batch.t_w).sum() / batch.t_w.sum()
    V = batch.aux.shape[-1]
    if aux_weight:
        loss = loss + aux_weight * word_loss(model, hidden[:, batch.video_at:batch.video_at + V], batch, (0, 1))
    if input_aux_weight:
        loss = loss + input_aux_weight * word_loss(model, vis, batch, (2, 1))
    if asked_weight and float(batch.q_w.sum()) > 0:
        ce = nn.losses.cross_entropy(logits_at(model, hidden, batch.q_idx), batch.q_ids, reduction="none")
        loss = loss + asked_weight * (ce * batch.q_w).sum() / batch.q_w.sum()
    return loss
