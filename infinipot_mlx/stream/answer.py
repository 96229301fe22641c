"""The answer loop of a stream session: a question in, the answer's text out, under the cap.

A mixin of session.StreamSession, backend-agnostic like it. Every token is counted:
the question with its template pieces, each answer token, and the closing piece
(`<|im_end|>\\n`) that is pinned after the answer. `max_tokens` caps an answer's length and
never shrinks the video memory by itself. Before each token the session makes room for it
and for the closing piece; when the cap is full, visual tokens are compressed (down to the
visual floor) and the oldest conversation turns leave the cache (room.py), and only
when neither can free a token does the answer stop, with `stop_reason == "cap"`.

stop_reason after an answer: "eos" (the model ended it), "max_tokens", "stop" (a stop
string), "cap" (the memory cap was full), "positions" (the model's trained range of
positions ran out), or "interrupted" (KeyboardInterrupt or an error while decoding).
`answer_tokens` after an answer: the tokens it generated, its end token (eos) not counted.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import UserError
from .locking import serialized, serialized_generator

STOP_NOTES = {
    "cap": "[answer stopped: the KV cap is full; raise --kv-budget or --reserve for longer answers]",
    "positions": "[answer stopped: the model's trained range of positions is used up]",
}


class QuestionTooLongError(UserError):
    """A question that cannot fit under the cap even with the video at its floor."""


class AnswerLoop:
    """ask(): prefill a question, decode greedily or by sampling, pin the answer."""

    answer_tokens = 0  # tokens the last answer generated (its end token not counted)

    @serialized
    def ask(self, question: str, max_tokens: int = 256, temperature: float = 0.0,
            top_p: float = 1.0, stop: tuple[str, ...] = ()) -> Iterator[str]:
        """Ask about everything streamed so far; yields the answer's text as it is decoded.

        The question and the answer are pinned; frames may keep arriving afterwards.
        Greedy by default; temperature > 0 samples (top_p < 1 for nucleus sampling).
        Raises QuestionTooLongError (nothing changed) when the question cannot fit.

        The question is checked now; the ask itself (queued frames flushed, the video
        segment closed, the prompt built and prefilled, the answer decoded) runs when the
        answer is first read, under one hold of the session's lock: frames that another
        thread adds before then come before the question, never inside it (locking.py).
        """
        if not question or not question.strip():
            raise UserError("the question is empty; type a question about the video")
        if max_tokens < 1:
            raise UserError(f"max_tokens must be at least 1, got {max_tokens}")
        self._close_open_answer()
        self.check_question(question)
        self.answer_tokens = 0
        return self._generate(question.strip(), max_tokens, temperature, top_p, stop)

    def check_question(self, question: str) -> None:
        """QuestionTooLongError when `question` and one answer token cannot fit under the cap.

        Counts what must stay: the system prompt, the open turn's pinned tokens, the video
        at its floor, the question's template pieces and the answer's closing piece.
        """
        pieces = self.spec.pieces
        ids = self._encode(pieces.user_open + question.strip() + pieces.question_close)
        need = len(ids) + 1 + len(self._answer_tail())
        if self.policy != "compact":  # `compact` renumbers when the range runs out
            self._check_position_range([self.cache.next_position + need + len(self.pending)])
        most = self.question_room()
        if need > most:
            raise QuestionTooLongError(
                f"the question takes {need} tokens with its template and one answer token, but the "
                f"KV cap of {self.config.capacity} leaves at most {most} beside the system prompt "
                "and the video's floor; shorten the question or raise --kv-budget")

    def _answer_tail(self) -> list[int]:
        return self._encode(self.spec.pieces.answer_close)

    def _question_text(self, question: str) -> str:
        """Flush the queued frames, close the open video, and the question's text to pin."""
        self._close_open_answer()
        self.flush()
        self._close_video(resume=True)  # the rest of the video continues it (feed.py)
        pieces = self.spec.pieces
        return ("" if self.user_turn_open else pieces.user_open) + question + pieces.question_close

    @serialized_generator
    def _generate(self, question, max_tokens, temperature, top_p, stop) -> Iterator[str]:
        tok, tail = self.adapter.tokenizer, self._answer_tail()
        eos = set(self.backend.eos_ids(tok, self.spec))  # eos_ids below (a bench may override)
        sampler = self.backend.make_sampler(temperature, top_p)
        with self._atomic():  # the question is asked whole (frames flushed, video closed), or not at all
            text = self._question_text(question)
            ids = self._encode(text)
            if not self.user_turn_open:
                self._begin_turn()
            if not self._make_room(len(ids) + 1 + len(tail), slack=self.config.reserve):
                raise QuestionTooLongError(
                    f"the question takes {len(ids) + 1 + len(tail)} tokens with its template and one "
                    f"answer token, more than the KV cap of {self.config.capacity} can free; shorten "
                    "the question or raise --kv-budget")
            self._attend = self.record_evidence
            try:
                logits = self._prefill_text(text, ids)
            finally:
                self._attend = False
            self.user_turn_open = False
            self.open_answer = []
        self.question_logits = self.backend.to_numpy(logits)  # (V,), kept for parity checks
        self.evidence = self._moments() if self.record_evidence else None
        self.stop_reason = "interrupted"
        text = TextStream(tok)
        token = sampler(logits)  # the next answer token, maybe still being computed
        self.answer_tokens = 0
        try:
            for step in range(max_tokens):
                last = step == max_tokens - 1
                ahead = None if last else self._feed_ahead(token, sampler, eos, len(tail))
                token_id = int(token)
                if token_id in eos:
                    self.stop_reason = "eos"
                    break
                if ahead is None and not last:  # no free room: make it, then feed as it is
                    with self._atomic():
                        reason = self._room_for_token(len(tail))
                    if reason:
                        self.stop_reason = reason
                        break
                    with self._atomic():
                        ahead = self._feed(token, sampler)
                shown = len(text.text)
                piece = text.add(token_id)
                cut = _first_stop(text.text, stop)
                if cut is not None:
                    self.stop_reason = "stop"  # the token is fed: the closing piece follows it
                    yield text.text[shown:cut]
                    return
                if last:  # not fed: it goes in with the closing piece
                    self.open_answer, self.unfed = self.open_answer + [token_id], token_id
                    self.stop_reason = "max_tokens"
                    yield piece + text.flush()
                    return
                if piece:
                    yield piece
                token = ahead
            if self.stop_reason == "eos" and self.open_answer:
                yield text.flush()
        finally:
            self.answer_tokens = len(text.tokens)  # generated, the end token (eos) not counted
            self._close_open_answer()

    def _feed_ahead(self, token, sampler, eos: set, tail: int):
        """Feed `token` while it may still be computing and start the next one (mlx-lm's
        pipelining), when one more token and the closing piece fit without making room.

        Undone if `token` ends the answer. Returns the next token, or None when nothing was
        fed (no free room, or the end)."""
        if not self._room_is_free(1 + tail):
            return None
        try:
            with self._atomic():
                following = self._feed(token, sampler)
                if int(token) in eos:  # waits for `token` only; the next forward runs meanwhile
                    raise Undo
        except Undo:
            return None
        return following

    def _feed(self, token, sampler):
        """Pin one answer token; returns the token after it (computing, not awaited).
        The caller makes it a transaction (_atomic)."""
        with self._timed("decode"):
            following = sampler(self._prefill_ids(token, wait=False))
            self.backend.start(following)
            self.open_answer = self.open_answer + [int(token)]
            self.counters.tokens_decoded += 1
        return following

    def _moments(self):
        """The moments the question's last token attends to most (evidence.py)."""
        from .evidence import moments

        masses, slot_ids = self.attention
        return moments(masses, slot_ids, self.slot_seconds, self.slot_video, self.videos)

    def _room_is_free(self, n_tokens: int) -> bool:
        """Whether n_tokens more fit as things are: no compression, turn drop or renumbering."""
        limit, cache = self.spec.max_positions, self.cache
        if limit is not None and cache.next_position + n_tokens > limit:
            return False
        return not self.config.bounded or cache.n_cached + n_tokens <= self.config.capacity

    def _room_for_token(self, tail: int) -> str | None:
        """None when one more answer token and the closing piece fit; else why not."""
        limit = self.spec.max_positions
        self._renumber_if_needed(1 + tail)  # `compact`: renumbers when the range runs out
        if limit is not None and self.cache.next_position + 1 + tail > limit:
            return "positions"
        if not self._make_room(1 + tail, slack=max(1, self.config.reserve // 2)):
            return "cap"
        return None

    def _close_open_answer(self) -> None:
        """Pin the open answer's end (its last token when unfed, then `<|im_end|>\\n`).

        Runs when an answer ends, and again before the next turn if an interrupt stopped it.
        """
        if self.open_answer is None:
            return
        tail = self._answer_tail()
        if self.unfed is not None:
            tail = [self.unfed] + tail
        with self._atomic():
            text = self.adapter.tokenizer.decode(self.open_answer) + self.spec.pieces.answer_close
            self._prefill_text(text, tail)
            self.open_answer, self.unfed = None, None


class Undo(Exception):
    """Raised inside StreamSession._atomic to undo its block: the end of scratch(), or a
    token fed ahead that turned out to end the answer."""


class TextStream:
    """Incremental detokenization: each token decodes only the tokens since the last whole
    character, so an answer costs O(n), not O(n^2); the pieces join to the full decode.

    `prefix` marks the tokens already shown whose text is the context for the next ones
    (a byte-level BPE token may complete a character begun by the one before).
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.text = tokenizer, [], ""
        self.prefix = self.read = 0  # tokens[prefix:read] decode to the last shown context
        self.context = ""  # their text

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def add(self, token: int) -> str:
        """The new text this token completes ("" while a character is unfinished)."""
        self.tokens.append(token)
        current = self._decode(self.tokens[self.prefix:])
        if len(current) <= len(self.context) or current.endswith("\ufffd"):
            return ""
        piece = current[len(self.context):]
        self.prefix, self.read, self.text = self.read, len(self.tokens), self.text + piece
        self.context = piece  # the text of tokens[prefix:read]: decoding is concatenative
        return piece

    def flush(self) -> str:
        """Whatever is held back (an unfinished character at the end), as the full decode has it."""
        rest = self._decode(self.tokens)[len(self.text):]
        self.text += rest
        return rest


def eos_ids(tokenizer, spec) -> list[int]:
    """The token ids that end an answer, sorted: the chat template's end token (`<|im_end|>`),
    the checkpoint's generation_config eos_token_id list (spec.eos_token_ids; Qwen2.5-VL adds
    `<|endoftext|>`) and the tokenizer's eos_token_id. Both backends use this one function."""
    ids = {tokenizer.convert_tokens_to_ids(spec.pieces.eos), tokenizer.eos_token_id, *spec.eos_token_ids}
    return sorted(i for i in ids if i is not None)


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
