"""The organism's PyTorch trainer and the train-step benchmark: same loss as MLX, a step
that learns, a checkpoint mlx-vlm reads with equal logits, the overfit run's records."""

import json

import numpy as np
import pytest

from infinipot_mlx import organism
from infinipot_mlx.organism import data
from infinipot_mlx.organism.prompts import PromptBuilder, batch_arrays, episode_prompts

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _arrays(independent: bool, n: int = 2, n_frames: int = 8):
    from tokenizers import Tokenizer

    from infinipot_mlx.organism.train_torch import answer_arrays

    tok = Tokenizer.from_file(str(organism.weights_dir() / "tokenizer.json"))
    builder = PromptBuilder(tok)
    prompts, frames = episode_prompts(builder, list(range(n)), data.VideoOptions(n_frames=n_frames), True, independent)
    arrays = batch_arrays(prompts, frames, tok.token_to_id("<|endoftext|>"), builder.word_id["no"])
    return arrays, answer_arrays(prompts)


def _mlx(folder):
    from infinipot_mlx.organism.train import load_checkpoint

    return load_checkpoint(folder)[0]


@pytest.mark.parametrize("independent", [False, True])
def test_torch_and_mlx_losses_agree_on_a_batch(independent):
    from infinipot_mlx.organism import model as om
    from infinipot_mlx.organism import train_torch as tt

    arrays, _ = _arrays(independent)
    assert ("mask" in arrays) == independent
    weights = dict(aux_weight=1.0, input_aux_weight=0.5, asked_weight=0.5)
    ours = om.loss_fn(_mlx(organism.weights_dir()), om.batch_from_arrays(arrays), **weights).item()
    with torch.no_grad():
        theirs = float(tt.loss_fn(tt.load_model(organism.weights_dir()), tt.tensors(arrays), **weights))
    assert abs(ours - theirs) < 1e-4, (ours, theirs)


def test_torch_steps_lower_the_loss_and_the_checkpoint_reads_the_same_in_mlx_vlm(tmp_path):
    import mlx.core as mx

    from infinipot_mlx.organism import model as om
    from infinipot_mlx.organism import train_torch as tt

    arrays, answers = _arrays(True)
    t = tt.tensors({**arrays, **answers})
    model = tt.load_model(organism.weights_dir())
    step = tt.Step(model, lr=1e-3, aux_weight=1.0)
    losses = [step(t) for _ in range(4)]
    assert losses[-1] < losses[0]
    out = tt.save_checkpoint(model, organism.weights_dir(), tmp_path / "ckpt")
    assert not (out / "organism_training.json").exists()  # that record describes the shipped weights
    model.eval()
    with torch.no_grad():
        hidden, _ = tt.hidden_states(model, t)
        theirs = tt.logits_at(model, hidden, t["answer_idx"]).numpy()
    loaded = _mlx(out)  # mlx_vlm.load: its unmodified classes
    ours = om.logits_at(loaded, om.hidden_states(loaded, om.batch_from_arrays(arrays)), mx.array(answers["answer_idx"]))
    assert np.abs(np.array(ours) - theirs).max() < 1e-4


def test_overfit_records_curves_and_weights(tmp_path):
    from infinipot_mlx.organism import overfit

    out = tmp_path / "run"
    overfit.main(["--videos", "2", "--val-videos", "2", "--frames", "8", "--batch", "2", "--steps", "2",
                  "--eval-every", "1", "--out", str(out), "--tie-colour-words"])
    history = json.loads((out / "history.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 1, 2]
    assert set(history[0]["train"]) <= {*data.QTYPES, "mean"} and "count" in history[0]["train"]
    assert (out / "curves.png").stat().st_size > 0 and (out / "weights" / "model.safetensors").exists()


def test_bench_train_step_times_both_frameworks_on_one_batch(tmp_path, capsys):
    from infinipot_mlx.cli.bench import build_parser

    args = build_parser().parse_args(["train-step", "--out", str(tmp_path), "--batch", "1", "--frames", "8",
                                      "--rounds", "1", "--steps", "2", "--threads", "1"])
    args.run(args)
    record = json.loads((tmp_path / "train_step.json").read_text())
    assert record["losses_agree"] and record["summary"]["loss_difference"] < 1e-4
    assert set(record["summary"]["configs"]) == {"mlx@1", "torch@1"}
    assert all(len(r["step_s"]) == 2 for r in record["runs"])
    blas = {r["framework"]: r["environment"]["blas"] for r in record["runs"]}
    assert blas["torch"].startswith("torch: ") and "OpenBLAS preloaded" not in blas["torch"]
    assert "torch faster by" in capsys.readouterr().out


def test_bench_train_step_refuses_one_step(capsys):
    from infinipot_mlx.cli.bench import main

    assert main(["train-step", "--steps", "1"]) == 2
    assert "--steps must be at least 2" in capsys.readouterr().err


def test_soften_attention_scales_the_logits_zero_makes_attention_uniform():
    from infinipot_mlx.organism import train_torch as tt

    arrays, _ = _arrays(False, n=1)
    t = tt.tensors(arrays)
    model = tt.load_model(organism.weights_dir()).eval()
    model.set_attn_implementation("eager")
    tt.soften_attention(model, 0.0)  # every logit 0: each row spreads evenly over its causal prefix
    lm, at, V = model.model.language_model, int(t["video_at"]), t["aux"].shape[-1]
    with torch.no_grad():
        vis = model.model.visual(t["pixels"], grid_thw=t["grid_thw"]).pooler_output[None]
        emb = lm.embed_tokens(t["ids"])
        emb = torch.cat([emb[:, :at], vis, emb[:, at + V:]], 1)
        attentions = lm(inputs_embeds=emb, position_ids=t["pos"], output_attentions=True, use_cache=False).attentions
    L = emb.shape[1]
    uniform = torch.tril(torch.ones(L, L)) / torch.arange(1, L + 1)[:, None]
    for a in attentions:
        assert torch.allclose(a[0], uniform.expand_as(a[0]), atol=1e-6)


def test_diagnose_reports_the_shipped_models_collapsed_attention():
    from infinipot_mlx.organism.diagnose import diagnose

    report = diagnose(organism.weights_dir(), 2)
    assert report["videos"] == 2 and set(report["tokens"]) == set(data.COLOURS)
    assert not any(t["same_id"] for t in report["tokens"].values())  # " red" is not "red"
    entropy = report["attention_from_answer"]["entropy_nats (uniform over the prompt: ln L)"]
    assert len(entropy) == 4 and max(entropy) < 0.5  # every head on about one token: the finding
    for probe in ("probe_video_token_colour", "probe_present_at_colour_tok", "probe_present_at_answer"):
        assert len(report[probe]) == 5 and all(0 <= p <= 1 for p in report[probe])  # input + 4 layers
