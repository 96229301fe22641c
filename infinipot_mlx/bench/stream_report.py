"""Tables, the summary against full KV, and the plots of the stream benchmark (stream.py)."""

from __future__ import annotations

from pathlib import Path

from .plots import Line, Panel, line_panels

POINT_FIELDS = (  # every measured point of every method has these keys
    "frames", "slots", "visual_tokens_streamed", "x_capacity", "tokens_cached",
    "max_tokens_cached", "tokens_visual", "kv_bytes", "active_memory_bytes", "peak_memory_bytes",
    "ms_per_frame", "stream_ms_per_frame", "compressions", "compress_share", "seconds",
    "ttft_ms", "decode_tokens_per_s", "answer_tokens", "question_peak_memory_bytes",
    "tokens_cached_after_answer",
)
MB = 1 << 20
STYLES = {"full": dict(color="black", linestyle="--"), "infinipot_v": dict(color="tab:red"),
          "uniform": dict(color="tab:blue"), "sliding_window": dict(color="tab:green"),
          "infinipot_v_kv8": dict(color="tab:red", linestyle=":"),
          "infinipot_v_kv4": dict(color="darkred", linestyle=":"),
          "mlx_vlm_rotating": dict(color="tab:purple", linestyle="-."),
          "mlx_vlm_quant8": dict(color="tab:orange", linestyle="-.")}


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _per_vision(point: dict) -> float | None:
    """Prefill ms per frame over vision ms per frame: prefill cost in units of this machine's speed."""
    ms = point["ms_per_frame"]
    return _ratio(ms["prefill"], ms["vision"])


def summarize(record: dict) -> list[dict]:
    """The last point of every method, with ratios to full KV measured in the same run."""
    last = {m: r["points"][-1] for m, r in record["methods"].items()}
    full = last.get("full")
    rows = []
    for method, p in last.items():
        row = dict(method=method, frames=p["frames"], tokens_cached=p["tokens_cached"],
                   kv_bytes=p["kv_bytes"], peak_memory_bytes=p["peak_memory_bytes"],
                   stream_ms_per_frame=p["stream_ms_per_frame"], compress_share=p["compress_share"],
                   ttft_ms=p["ttft_ms"], decode_tokens_per_s=p["decode_tokens_per_s"],
                   decode_vs_mlx_lm=p.get("decode_vs_mlx_lm"))
        if full is not None:
            row["vs_full"] = {
                "kv_bytes": _ratio(p["kv_bytes"], full["kv_bytes"]),
                "peak_memory": _ratio(p["peak_memory_bytes"], full["peak_memory_bytes"]),
                "stream_ms_per_frame": _ratio(p["stream_ms_per_frame"], full["stream_ms_per_frame"]),
                "ttft": _ratio(p["ttft_ms"], full["ttft_ms"]),
                "decode_tokens_per_s": _ratio(p["decode_tokens_per_s"], full["decode_tokens_per_s"]),
                # vision is the same work in every method, so prefill/vision cancels the
                # machine's speed drifting between methods (other work starting or stopping)
                "prefill_per_vision": _ratio(_per_vision(p), _per_vision(full)),
            }
        rows.append(row)
    return rows


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(record: dict) -> None:
    """Every point of every method, then the summary against full."""
    plan = record["plan"]
    print(f"\ncapacity {plan['capacity']} tokens ({plan['capacity_visual']} visual + "
          f"{plan['text_room']} text room + {plan['reserve']} reserve); "
          f"{record['question']['answer_tokens']} tokens per answer; ms per sampled frame")
    head = (f"{'method':<17}{'frames':>7}{'xcap':>6}{'cached':>8}{'KV MB':>8}{'peak MB':>9}"
            f"{'active MB':>10}{'vision':>8}{'prefill':>8}{'compr':>7}{'compr%':>7}"
            f"{'TTFT ms':>9}{'tok/s':>7}{'mlx-lm':>8}{'ratio':>7}")
    print(head)
    for method, result in record["methods"].items():
        for p in result["points"]:
            ms = p["ms_per_frame"]
            print(f"{method:<17}{p['frames']:>7}{p['x_capacity']:>6.1f}{p['tokens_cached']:>8}"
                  f"{p['kv_bytes'] / MB:>8.1f}{p['peak_memory_bytes'] / MB:>9.1f}"
                  f"{p['active_memory_bytes'] / MB:>10.1f}{ms['vision']:>8.1f}{ms['prefill']:>8.1f}"
                  f"{ms['compress']:>7.1f}{100 * p['compress_share']:>7.2f}{p['ttft_ms']:>9.1f}"
                  f"{_fmt(p['decode_tokens_per_s'], '.1f'):>7}"
                  f"{_fmt(p.get('mlx_lm_decode_tokens_per_s'), '.1f'):>8}"
                  f"{_fmt(p.get('decode_vs_mlx_lm'), '.2f'):>7}")
    print("\nat the last point, relative to full KV (same run):")
    print(f"{'method':<17}{'KV':>7}{'peak':>7}{'ms/frame':>10}{'prefill/vision':>16}{'TTFT':>7}"
          f"{'decode':>8}")
    for row in record["summary"]:
        r = row.get("vs_full", {})
        print(f"{row['method']:<17}{_fmt(r.get('kv_bytes'), '.3f'):>7}"
              f"{_fmt(r.get('peak_memory'), '.3f'):>7}{_fmt(r.get('stream_ms_per_frame'), '.3f'):>10}"
              f"{_fmt(r.get('prefill_per_vision'), '.3f'):>16}{_fmt(r.get('ttft'), '.3f'):>7}"
              f"{_fmt(r.get('decode_tokens_per_s'), '.3f'):>8}")
    print("(vision is identical work in every method: its ms per frame shows how fast the shared "
          "machine was during each method; mlx-lm: its generate_step's decode tokens/s on the same "
          "LM and cache length, ratio = ours / mlx-lm)")


def plot_stream(record: dict, out: Path) -> list[Path]:
    """stream_memory.png, stream_ms_per_frame.png, stream_decode.png: one line per method."""
    lines = [Line(m, r["points"], STYLES.get(m, {})) for m, r in record["methods"].items()]
    frames = lambda p: p["frames"]  # noqa: E731
    size, cap = record["size"], record["plan"]["capacity"]
    title = (f"random Qwen2.5-VL ({size['name']}: LM {size['hidden_size']}x{size['num_hidden_layers']}, "
             f"T={size['tokens_per_slot']}), capacity {cap} tokens; this machine's wall clock")
    ms = lambda k: (lambda p: p["ms_per_frame"][k])  # noqa: E731
    specs = [
        ("stream_memory.png", [
            Panel("peak memory while streaming (MB)", lambda p: p["peak_memory_bytes"] / 2**20),
            Panel("KV bytes held (MB)", lambda p: p["kv_bytes"] / 2**20),
            Panel("tokens cached per layer", lambda p: p["tokens_cached"], {"capacity": cap})]),
        ("stream_ms_per_frame.png", [Panel("vision ms / frame", ms("vision")),
                                     Panel("prefill ms / frame", ms("prefill")),
                                     Panel("compression ms / frame", ms("compress"))]),
        ("stream_decode.png", [Panel("decode tokens / s", lambda p: p["decode_tokens_per_s"]),
                               Panel("time to first token (ms)", lambda p: p["ttft_ms"])]),
    ]
    return [line_panels(out / name, lines, frames, "frames streamed", panels, title)
            for name, panels in specs]
