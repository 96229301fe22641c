"""Ranked answers across a library: which video, and when, answers a question.

    from infinipot_mlx.library.search import search
    for hit in search("~/videos-library", "Was there a dog in the pool?", top=5):
        print(hit.rank, hit.name, hit.seconds, hit.answer, hit.score)

Every done memory of the catalogue is loaded (no video is read or streamed again: the
vision tower never runs) and asked the question once, greedily, with attention evidence on.
Each memory gives one Hit: its answer, the moment the answer rests on (the kept slot that
the question's last token attends to most, stream/evidence.py) and a relevance score; the
hits are sorted by score, highest first.

The relevance score is a probability read off the answer's first token (the softmax of the
logits after the question, the position the whole answer is decided from):

- with an expected answer (`expect`, `library ask --expect WORD`): P(first token of WORD),
  summed over its spellings `word`, `Word`, `WORD` (distinct tokens only). A yes/no
  question (its first word is an auxiliary verb: is, was, did, does, has, can...) expects
  "yes" by default, so it ranks by P(yes): the usual relevance score of a VLM reranker, and
  one that a confident "no, there is no dog" does not inflate. A question with a known
  answer ("Where did the red shape appear?" expecting "northeast") ranks the videos by how
  likely each makes that answer.
- otherwise (an open question): P(the greedy answer's first token), the model's confidence
  in its own answer. This ranks a confident answer above a guess, but a confident "nothing
  here" too: ask in a yes/no form when you can.

Why not more: the first token decides a one-word answer outright and is the one every model
computes before any decoding, so the score costs no extra forward pass; a multi-token
likelihood would need the expected answer forced through the model token by token. Why not
times the evidence mass of the top moment: a moment's share of the attention is larger in
a short video (fewer slots share it) than in a long one, so multiplying by it would rank
short videos first whatever they show; the share is reported beside the score instead.
The score was chosen before the benchmark (bench/library.py) was run, and not tuned on it.

Cost: one memory load (read, checksum, restore) plus one question prefill and a short
greedy answer per memory, so a query's time grows linearly with the number of memories;
`python -m infinipot_mlx.bench library` measures both parts.

Thumbnails (`thumbnails=True`): a JPEG of the video file's frame at the moment, written
once under DIR/thumbnails/ (OpenCV) and reused; None when the file can no longer be read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path

from ..errors import UserError, one_line
from . import distributed
from .catalogue import Catalogue, Entry

THUMBNAILS = "thumbnails"
MAX_ANSWER_TOKENS = 32  # a search answer is a short reply; the score is read before decoding
YES_NO_STARTS = ("is", "are", "was", "were", "do", "does", "did", "has", "have", "had", "can", "could",
                 "will", "would", "should", "am")


@dataclass
class Hit:
    """One video's answer to a question, ranked among the library's."""

    rank: int  # 1 = the best answer
    name: str  # the catalogue name (path relative to the indexed folder)
    path: str  # the video file's absolute path when indexed
    seconds: float  # the moment the answer rests on (source time of its kept slot)
    answer: str
    score: float  # in [0, 1]: the relevance probability (module docstring)
    share: float  # the moment's share of the attention the video received
    thumbnail: str | None = None  # a JPEG of the frame at `seconds` (thumbnails=True)

    @property
    def clock(self) -> str:
        """mm:ss (h:mm:ss past an hour)."""
        whole = int(self.seconds)
        hours, rest = divmod(whole, 3600)
        return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class Timings:
    """Seconds spent over a ranker's queries: loading memories and answering from them."""

    memories: int = 0
    load: float = 0.0
    score: float = 0.0
    per_query: list = field(default_factory=list)  # seconds of each ask()


def expected_answer(question: str) -> str | None:
    """'yes' for a yes/no question (its first word an auxiliary verb), else None."""
    words = question.strip().lower().split()
    return "yes" if words and words[0].strip(",?") in YES_NO_STARTS else None


def chosen(entries: list[Entry], video: str | None, library: Path) -> list[Entry]:
    """The done rows to ask: all, or those whose name, file name or stem is `video`."""
    if video is not None:
        entries = [e for e in entries if video in (e.name, Path(e.name).name, Path(e.name).stem)]
        if not entries:
            raise UserError(f"no indexed video named {video!r} in {library}; "
                            "python -m infinipot_mlx.library list shows the names")
    if not entries:
        raise UserError(f"no indexed video in {library}; index a folder first")
    return entries


def open_for(entry: Entry, model: str | None, device: str = "auto"):
    """A session for `entry`'s checkpoint (or `model`) and backend, with its settings
    (load_memory restores each memory's own config)."""
    from ..contract.config import DEFAULT_CAPACITY, InfiniPotConfig
    from ..contract.model_path import resolve_model_path
    from ..door import open_with

    settings = json.loads(entry.settings)
    config = dict(settings["config"], capacity=settings["config"]["capacity"] or DEFAULT_CAPACITY)
    if config["method"] == "full":
        config["capacity"] = None
    folder = resolve_model_path(model or entry.model_path, flag="--model")
    return open_with(entry.backend, folder, InfiniPotConfig(**config), settings["fps"], device,
                     settings.get("dtype"))


def first_token_probability(session, expect: str | None) -> float:
    """P(the answer's first token) from the logits after the question (module docstring)."""
    import numpy as np

    logits = np.asarray(session.question_logits, np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    if expect is None:
        return float(p.max())  # greedy: the first token is the argmax
    ids = set()
    for spelling in dict.fromkeys((expect.strip(), expect.strip().capitalize(), expect.strip().upper())):
        encoded = session._encode(spelling)
        if encoded:
            ids.add(encoded[0])
    return float(sum(p[i] for i in ids))


class Ranker:
    """Ranks a library's memories for questions; one session per checkpoint and backend,
    opened at the first question and kept for the next ones (the page, the benchmark)."""

    def __init__(self, library_dir, model: str | None = None, device: str = "auto"):
        self.root = Path(library_dir).expanduser()
        self.model, self.device = model, device
        self.sessions: dict[tuple[str, str], object] = {}
        self.timings = Timings()

    def _session(self, e: Entry):
        key = (self.model or e.model_path, e.backend)
        if key not in self.sessions:
            self.sessions[key] = open_for(e, self.model, self.device)
        return self.sessions[key]

    def ask(self, question: str, *, top: int = 5, expect: str | None = None, video: str | None = None,
            thumbnails: bool = False, max_tokens: int = MAX_ANSWER_TOKENS, on_progress=None,
            on_error=None, group=None) -> list[Hit]:
        """The `top` best hits over every done memory (or `video`'s). A memory that cannot
        answer (UserError) goes to on_error(name, message) when given, else raises.
        `group` (library/distributed.py) of more than one rank: each rank scores its share of
        the memories (on_progress counts those) and every rank returns the same hits, those of
        one process over every memory that any rank can read."""
        if not question.strip():
            raise UserError("the question is empty; write a question about the videos")
        if top < 1:
            raise UserError(f"--top must be a positive integer, got {top}")
        expect = expect if expect is not None else expected_answer(question)
        start, sharded = time.perf_counter(), group is not None and group.size() > 1
        with Catalogue(self.root) as catalogue:
            entries = chosen(catalogue.entries("done"), video, self.root)
            contents = {e.name: e.content for e in entries}
            ordered = sorted(entries, key=self._order)
            if sharded:  # under mlx.launch: this rank's share of the memories
                mine = distributed.share([_key(e) for e in ordered], group)
                ordered = [e for e in ordered if _key(e) in mine]
            failures, report = [], on_error
            if sharded and on_error is not None:  # reported once every rank's are gathered
                def report(name: str, message: str) -> None:
                    failures.append((name, message))
            hits = self._score(catalogue, ordered, question, expect, max_tokens, on_progress, report)
            thumbs = catalogue.root / THUMBNAILS
        if sharded:  # every rank's hits and failures, on every rank
            hits, failures, contents = _gathered(hits, failures, contents, group)
            for name, message in failures:
                on_error(name, message)
        hits = [hit for _, hit in sorted(hits, key=lambda pair: pair[0])]  # the single process's order,
        hits.sort(key=lambda h: (-h.score, h.name))  # then by score: ties broken the same way
        for rank, hit in enumerate(hits, 1):
            hit.rank = rank
        hits = hits[:top]
        if thumbnails:
            for hit in hits:
                hit.thumbnail = thumbnail(hit.path, hit.seconds, thumbs, contents[hit.name])
        self.timings.per_query.append(time.perf_counter() - start)
        return hits

    def _score(self, catalogue: Catalogue, ordered: list[Entry], question: str, expect: str | None,
               max_tokens: int, on_progress, on_error) -> list[tuple[tuple, Hit]]:
        """(order, hit) for each memory in `ordered` that answers; the others go to on_error
        (name, message), or raise without it."""
        from ..contract.model_path import ModelPathError

        hits = []
        for done, e in enumerate(ordered, 1):
            try:
                hits.append((self._order(e), self._one(catalogue, e, question, expect, max_tokens)))
            except UserError as err:
                if on_error is None or (self.model and isinstance(err, ModelPathError)):
                    raise  # no video can be asked with a wrong --model: bad input to the command
                on_error(e.name, one_line(err))
            if on_progress is not None:
                on_progress(done, len(ordered))
        return hits

    def _order(self, e: Entry) -> tuple[str, str, str]:
        """The order memories are scored in (one session per checkpoint and backend at a time)."""
        return (self.model or e.model_path, e.backend, e.name)

    def _one(self, catalogue: Catalogue, e: Entry, question: str, expect: str | None, max_tokens: int) -> Hit:
        session = self._session(e)
        t0 = time.perf_counter()
        session.load_memory(catalogue.memory_path(e))
        t1 = time.perf_counter()
        answer, score, seconds, share = answer_loaded(session, question, expect, max_tokens)
        self.timings.memories += 1
        self.timings.load += t1 - t0
        self.timings.score += time.perf_counter() - t1
        return Hit(0, e.name, e.path, seconds, answer, score, share)


def _key(e: Entry) -> str:
    """A catalogue row's key, the same on every Mac that reads it."""
    return "\n".join((e.content, e.model_key, e.settings))


def _gathered(hits: list, failures: list, contents: dict, group) -> tuple[list, list, dict]:
    """Every rank's (order, hit) pairs and (name, message) failures, and the hits' video
    contents (for thumbnails), from this rank's."""
    mine = [[list(order), asdict(hit), contents[hit.name]] for order, hit in hits]
    every = distributed.gather([mine, failures], group)  # per rank: [its hits, its failures]
    pairs = [(tuple(order), Hit(**hit)) for part, _ in every for order, hit, _ in part]
    contents = {hit["name"]: content for part, _ in every for _, hit, content in part}
    return pairs, [tuple(f) for _, more in every for f in more], contents


def answer_loaded(session, question: str, expect: str | None, max_tokens: int = MAX_ANSWER_TOKENS):
    """(answer, score, seconds, share) from the memory loaded in `session`: the greedy answer,
    its relevance score and the moment it rests on (0.0, 0.0 with no video kept)."""
    session.check_question(question)
    session.record_evidence = True
    reply = session.ask(question, max_tokens=max_tokens)
    try:
        answer = "".join(reply).strip()
    finally:
        reply.close()
    top = session.evidence[0] if session.evidence else None
    return (answer, first_token_probability(session, expect), (top.seconds if top else 0.0),
            (top.share if top else 0.0))


def search(library_dir, question: str, *, top: int = 5, model: str | None = None, device: str = "auto",
           thumbnails: bool = False, video: str | None = None, on_progress=None,
           expect: str | None = None, on_error=None) -> list[Hit]:
    """The `top` videos and moments of the library at `library_dir` that best answer
    `question`, best first (module docstring: the score). on_progress(done, total) after
    each memory; `expect`: the answer sought (default: 'yes' for a yes/no question)."""
    return Ranker(library_dir, model, device).ask(question, top=top, expect=expect, video=video,
                                                  thumbnails=thumbnails, on_progress=on_progress,
                                                  on_error=on_error)


def thumbnail(video: str, seconds: float, folder: Path, content: str) -> str | None:
    """A JPEG of `video`'s frame at `seconds` under `folder`, made once per video content
    (its catalogue hash) and moment; None when the file cannot be read."""
    import cv2

    key = content.rsplit(":", 1)[-1][:12]
    out = folder / f"{Path(video).stem[:40]}-{key}-{round(seconds * 1000):d}ms.jpg"
    if out.is_file():
        return str(out)
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            return None
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        if fps > 0:
            capture.set(cv2.CAP_PROP_POS_FRAMES, round(seconds * fps))
        else:
            capture.set(cv2.CAP_PROP_POS_MSEC, seconds * 1000.0)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".part.jpg")
    if not cv2.imwrite(str(part), frame):
        return None
    part.replace(out)
    return str(out)
