"""One run of `bench vs-mlx-vlm` (vs_mlx_vlm.py) in its own process: one side on one video,
one JSON line on stdout (MARKER + the result), then an exit without interpreter teardown.

mlx-vlm's side runs its own video path unchanged; the video's token count is read from the
prompt it ran (prompt tokens less the text around the one video placeholder). Our side runs
what the chat runs, through the same door (door.py), noting when the model is loaded and when
the first answer token arrives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from .vs_mlx_vlm import MARKER, SIDES, _rss


def run_mlx_vlm(opts, t0: float, matched: bool) -> dict:
    """mlx-vlm's generate path for a video (generate/dispatch.py main, native video processor):
    load, apply_chat_template(video=, fps=), stream_generate(video=[V], fps, max_frames)."""
    import cv2
    import mlx.core as mx
    from mlx_vlm import apply_chat_template, load, stream_generate

    model, processor = load(opts.model)
    load_s = time.perf_counter() - t0
    vp = processor.video_processor
    if matched:  # mlx-vlm budgets the whole clip's pixels; open both limits: frames keep H x W
        vp.min_pixels, vp.max_pixels = 0, 1 << 62
    cap = cv2.VideoCapture(opts.video)
    n_video = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    prompt = apply_chat_template(processor, model.config, opts.question, num_images=0, num_audios=0,
                                 enable_thinking=False, video=[opts.video], fps=opts.fps)
    first = last = None
    for chunk in stream_generate(model, processor, prompt, None, None, [opts.video], fps=opts.fps,
                                 max_frames=max(n_video, 4), max_tokens=opts.max_tokens,
                                 temperature=0.0, enable_thinking=False):
        first = first or time.perf_counter()
        last = chunk
    end = time.perf_counter()
    # the video's tokens: the prompt as run, less its text (one <|video_pad|> placeholder)
    pad = processor.tokenizer.encode(prompt, add_special_tokens=False)
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert pad.count(video_pad) == 1, "one video placeholder in the prompt"
    video_tokens = last.prompt_tokens - (len(pad) - 1)
    frames = min(n_video, max(n_video, 4))  # every frame is sampled (the file is written at --fps)
    slots = math.ceil(frames / vp.temporal_patch_size)
    return dict(frames=frames, frame_hw=None, tokens_per_slot=video_tokens / slots,
                tokens_per_frame=video_tokens / slots / vp.temporal_patch_size,
                prompt_tokens=last.prompt_tokens, video_tokens=video_tokens,
                mlx_peak_bytes=int(mx.get_peak_memory()), ttft_s=(first or end) - t0, total_s=end - t0,
                load_s=load_s, answer_tokens=last.generation_tokens,
                extra=dict(video_pixel_limits=[vp.min_pixels, vp.max_pixels],
                           video_frames_in_file=n_video))


def run_ours(opts, t0: float) -> tuple[dict, int]:
    """What `python -m infinipot_mlx.chat V --model M -q Q --fps F --max-pixels H*W --max-tokens K`
    does, through the same door (door.py: the chat's flags and defaults, open_stream,
    stream_source), with the load and the first answer token timed."""
    import mlx.core as mx

    from .. import door
    from ..errors import run_command

    p = argparse.ArgumentParser()
    p.add_argument("video")
    door.add_session_flags(p)
    argv = [opts.video, "--model", opts.model, "--fps", f"{opts.fps:g}",
            "--max-pixels", str(opts.frame_size * opts.frame_size)]
    args = p.parse_args(argv + (["--kv-budget", str(opts.kv_budget)] if opts.kv_budget else []),
                        namespace=argparse.Namespace(seed=0, load=None))
    marks: dict = {}

    def ours() -> int:
        door.check_session_args(args)
        opened = door.open_stream(args)
        marks["load"], session = time.perf_counter(), opened.session
        door.stream_source(session, opened.source, opts.video)
        reply = session.ask(opts.question, max_tokens=opts.max_tokens)
        try:
            for _piece in reply:
                if "first" not in marks:
                    marks.update(first=time.perf_counter(), stats=session.stats())
        finally:
            reply.close()
        marks.setdefault("first", time.perf_counter())  # the first token ended the answer
        marks.setdefault("stats", session.stats())
        marks["session"] = session
        return 0

    rc = run_command(ours)
    end = time.perf_counter()
    session = marks.get("session")
    if rc != 0 or session is None:
        return {}, rc or 1
    st, spec = session.stats(), session.spec
    per_slot = spec.tokens_per_slot(tuple(session.frame_hw))
    return dict(frames=st["frames_seen"], frame_hw=list(session.frame_hw), tokens_per_slot=per_slot,
                tokens_per_frame=per_slot / spec.frames_per_slot,
                prompt_tokens=marks["stats"]["tokens_cached"], video_tokens=st["slots_seen"] * per_slot,
                mlx_peak_bytes=int(mx.get_peak_memory()), ttft_s=marks["first"] - t0, total_s=end - t0,
                load_s=marks.get("load", end) - t0, answer_tokens=st["tokens_decoded"],
                extra=dict(capacity=st["capacity"], compressions=st["compressions"],
                           peak_cached=st["peak_cached"], visual_tokens_kept=st["tokens_visual"],
                           kv_bytes=st["kv_bytes"])), 0


def child_main(argv: list[str] | None = None) -> int:
    """One run: `python -m infinipot_mlx.bench.vs_mlx_vlm_child SIDE VIDEO --model M ...`."""
    p = argparse.ArgumentParser(prog="python -m infinipot_mlx.bench.vs_mlx_vlm_child")
    p.add_argument("side", choices=list(SIDES))
    p.add_argument("video")
    for name, kind in (("model", str), ("fps", float), ("frame-size", int), ("max-tokens", int),
                       ("question", str)):
        p.add_argument(f"--{name}", type=kind, required=True)
    p.add_argument("--kv-budget", type=int, default=None)
    opts = p.parse_args(argv)
    t0 = time.perf_counter()
    if opts.side == "infinipot":
        result, rc = run_ours(opts, t0)
    else:
        result, rc = run_mlx_vlm(opts, t0, matched=opts.side == "mlx_vlm"), 0
    if rc == 0:
        print(MARKER + json.dumps({**result, "vm_hwm_bytes": _rss("self")}), flush=True)
    return rc


if __name__ == "__main__":
    code = child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # interpreter teardown (with torch imported) touches ~100 MB more: not the run's
