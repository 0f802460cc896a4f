"""The training engine on a tiny real BERT: accumulation, resume, early stopping, LoRA, freezing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_config
from frugal_lm.engine.run import train


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_loss_falls_and_accuracy_rises(tiny_encoder_dir, sentiment_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=20, eval_every=30, lr=3e-3,
                      warmup_ratio=0.0, freeze_embeddings=False)
    summary = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert sum(losses[:5]) / 5 > 0.68  # chance level for two classes is ln 2 = 0.693
    assert sum(losses[-5:]) / 5 < 0.2
    assert summary["best"]["accuracy"] >= 0.9
    assert summary["steps"] == 120  # 48 rows / 8 per batch * 20 epochs


def first_step_gradients(cfg) -> dict[str, torch.Tensor]:
    """Run one optimizer step of the real engine and return the gradients the optimizer saw."""
    from frugal_lm.engine.run import _build
    from frugal_lm.engine.trainer import Trainer

    task, model = _build(cfg)
    Path(cfg.output).mkdir(parents=True)
    trainer = Trainer(model, task, task.train_set, task.collator(), cfg.train, cfg.output)
    seen: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.fit(has_eval=False, progress=False)
    return seen


def test_accumulation_equals_one_big_batch(tiny_encoder_nodrop_dir, sentiment_files, tmp_path):
    # 48 rows: one batch of 48 vs micro-batches of 20, 20 and 8 accumulated. Unequal micro-batches
    # catch a loss normalised per micro-batch instead of over the whole group.
    big = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / "big", epochs=1, batch_size=48,
                      group_by_length=False, eval_every=0, max_grad_norm=0)
    acc = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / "acc", epochs=1, batch_size=20,
                      grad_accum=3, group_by_length=False, eval_every=0, max_grad_norm=0)
    g_big, g_acc = first_step_gradients(big), first_step_gradients(acc)
    assert g_big.keys() == g_acc.keys() and len(g_big) > 10
    for key in g_big:  # relative to each tensor's norm: a wrong normalisation is off by several percent
        if g_big[key].norm() > 1e-9:  # (key biases get exactly-zero gradients up to rounding noise)
            assert (g_acc[key] - g_big[key]).norm() <= 1e-5 * g_big[key].norm(), key
    # and the engine's summary agrees: one step each
    assert train(big, overwrite=True, progress=False)["steps"] == train(acc, overwrite=True, progress=False)["steps"] == 1


def test_resume_continues_exactly(tiny_encoder_dir, sentiment_files, tmp_path):
    # Dropout is on in this model, so equal results also prove the RNG state was restored.
    full = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "full", epochs=3)
    part = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "part", epochs=3)
    s_full = train(full, progress=False)
    s_part = train(part, progress=False, stop_at_step=7)  # mid-epoch, between evaluations
    assert s_part["stopped"] == "interrupted" and s_part["steps"] == 7
    assert not (tmp_path / "part" / "model").exists()
    s_resumed = train(part, resume=True, progress=False)
    assert s_resumed["steps"] == s_full["steps"] == 18
    assert s_resumed["final"] == s_full["final"]
    assert s_resumed["best"] == s_full["best"] and s_resumed["best_step"] == s_full["best_step"]
    w_full, w_res = weights(tmp_path / "full"), weights(tmp_path / "part")
    for key in w_full:
        torch.testing.assert_close(w_full[key], w_res[key], atol=0, rtol=0)

    def losses(run):
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_early_stopping(tiny_encoder_dir, sentiment_files, tmp_path):
    # lr 0: the metric never improves after the first evaluation, so patience 2 stops at the third.
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=5, lr=0.0, eval_every=2,
                      patience=2)
    summary = train(cfg, progress=False)
    assert summary["stopped"] == "early stopping"
    assert summary["steps"] == 6
    assert summary["best_step"] == 2


def test_freezing_keeps_chosen_parameters_fixed(tiny_encoder_dir, sentiment_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=1, freeze_embeddings=True,
                      freeze_layers=1)
    summary = train(cfg, progress=False)
    base = load_file(str(tiny_encoder_dir / "model.safetensors"))
    after = weights(tmp_path / "run")
    for key, value in after.items():
        name = key.removeprefix("bert.")
        if name not in base:
            continue  # the new head
        frozen = name.startswith("embeddings.") or name.startswith("encoder.layer.0.")
        assert torch.equal(value, base[name]) == frozen, key
    n_frozen = sum(v.numel() for k, v in base.items() if k.startswith(("embeddings.", "encoder.layer.0.")))
    assert summary["total_parameters"] - summary["trainable_parameters"] == n_frozen


def test_lora_trains_adapters_and_head_only(tiny_encoder_dir, sentiment_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=2)
    cfg.peft.method = "lora"
    summary = train(cfg, progress=False)
    run = tmp_path / "run"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["dense", "key", "query", "value"]
    assert summary["trainable_parameters"] < summary["total_parameters"] / 2
    lora = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in lora) and any("classifier" in k for k in lora)
    # The adapter loads with plain peft onto the base model and agrees with the merged export.
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_encoder_dir), num_labels=2)
    peft_model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(str(run / "model")).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    torch.testing.assert_close(peft_model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    # the base encoder's weights are unchanged under LoRA: merged minus base is low-rank, not zero
    base_w = load_file(str(tiny_encoder_dir / "model.safetensors"))
    merged_w = weights(run)
    delta = merged_w["bert.encoder.layer.0.attention.self.query.weight"] - base_w["encoder.layer.0.attention.self.query.weight"]
    assert 0 < torch.linalg.matrix_rank(delta) <= cfg.peft.r
    assert torch.equal(merged_w["bert.embeddings.word_embeddings.weight"], base_w["embeddings.word_embeddings.weight"])


def test_time_budget_stops_cleanly_and_resumes(tiny_encoder_dir, sentiment_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3, max_minutes=1e-9)
    summary = train(cfg, progress=False)
    assert summary["stopped"] == "time budget" and summary["steps"] == 1
    assert (tmp_path / "run" / "model" / "config.json").exists()
    cfg.train.max_minutes = 0
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["stopped"] == "completed" and resumed["steps"] == 18


def test_existing_run_needs_resume_or_overwrite(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.errors import FrugalError

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", max_steps=1)
    train(cfg, progress=False)
    with pytest.raises(FrugalError, match="already exists"):
        train(cfg, progress=False)
    assert train(cfg, overwrite=True, progress=False)["steps"] == 1


def test_gradient_checkpointing_gives_the_same_step(tiny_encoder_nodrop_dir, sentiment_files, tmp_path):
    plain = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / "plain", max_steps=2, eval_every=0)
    ckpt = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / "ckpt", max_steps=2, eval_every=0,
                       gradient_checkpointing=True)
    train(plain, progress=False)
    train(ckpt, progress=False)
    w1, w2 = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-6, rtol=1e-5)


def test_cpu_precision_is_chosen_by_hardware_and_model_size(monkeypatch):
    from frugal_lm.engine import savers

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert savers.resolve_precision("bf16") == "bf16"
    assert savers.resolve_precision("fp32", 10**9) == "no"
    # the real probe: no bf16 instructions, no measurement; with them, a positive measured ratio
    speedup = savers.cpu_bf16_speedup()
    assert (speedup > 0) == bool(savers.cpu_bf16_flags())
    # the decision, for each kind of processor (the probe's result replaced, the rule is what is tested)
    big, tiny = 22_000_000, 100_000
    monkeypatch.setitem(savers._cpu_bf16, "speedup", 9.0)
    monkeypatch.setattr(savers, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert savers.resolve_precision("auto", big) == "bf16"
    assert savers.resolve_precision("auto", tiny) == "no"  # a tiny model gains nothing from bf16
    assert savers.resolve_precision("auto") == "no"  # model size unknown: the safe choice
    assert "9.0x" in savers.precision_reason("auto", big) and "amx_bf16" in savers.precision_reason("auto", big)
    assert "under 5M parameters" in savers.precision_reason("auto", tiny)
    monkeypatch.setitem(savers._cpu_bf16, "speedup", 1.2)  # instructions present but slow (e.g. emulated)
    assert savers.resolve_precision("auto", big) == "no"
    monkeypatch.setattr(savers, "cpu_bf16_flags", lambda: [])
    assert "no bf16 matrix instructions" in savers.precision_reason("auto", big)


def test_runs_of_different_precisions_share_a_process(tiny_encoder_dir, sentiment_files, tmp_path):
    """accelerate keeps one state per process and refuses a second precision; auto picks by model size, so
    one process (cross-validation, a notebook) may train an fp32 model and then a bf16 one."""
    from frugal_lm.engine.run import train

    got = [train(make_config(tiny_encoder_dir, sentiment_files, tmp_path / f"{i}{p}", max_steps=2, eval_every=2,
                             precision=p), progress=False)["precision"] for i, p in enumerate(("fp32", "bf16", "fp32"))]
    assert got == ["fp32", "bf16", "fp32"]


def test_unmerged_lora_run_predicts_like_merged(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.engine.run import load_run

    outputs = {}
    for merge in (True, False):
        cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / f"run{merge}", max_steps=3)
        cfg.peft.method, cfg.peft.merge = "lora", merge
        train(cfg, progress=False)
        _, task, model = load_run(tmp_path / f"run{merge}")
        outputs[merge] = task.evaluate(model, task.read(str(sentiment_files[1])))
    assert not (tmp_path / "runFalse" / "model").exists()
    assert outputs[True]["loss"] == pytest.approx(outputs[False]["loss"], abs=1e-5)


def test_clipping_inside_the_fused_adamw_kernel_equals_clip_grad_norm(tiny_encoder_nodrop_dir, sentiment_files,
                                                                       tmp_path, monkeypatch):
    # The engine clips by the fused kernel's grad_scale (trainer._clip_by_grad_scale) instead of
    # clip_grad_norm_'s extra pass: the same weights after a few steps; a kernel that ignored the divisor would
    # give the unclipped run's weights.
    from frugal_lm.engine import trainer as engine

    def run(name: str, max_grad_norm: float, in_kernel: bool) -> dict[str, torch.Tensor]:
        cfg = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / name, epochs=1, batch_size=8,
                          group_by_length=False, eval_every=0, max_grad_norm=max_grad_norm, lr=1e-2,
                          warmup_ratio=0.0, freeze_embeddings=False)
        with monkeypatch.context() as patch:
            if not in_kernel:
                patch.setattr(engine, "_clips_in_kernel", lambda *args: False)
            train(cfg, progress=False)
        return weights(tmp_path / name)

    kernel, reference, unclipped = run("kernel", 0.05, True), run("ref", 0.05, False), run("free", 0.0, True)
    assert kernel.keys() == reference.keys() and len(kernel) > 10
    for key in kernel:
        assert torch.allclose(kernel[key], reference[key], rtol=1e-5, atol=1e-6), key
    assert max((kernel[k] - unclipped[k]).abs().max() for k in kernel) > 1e-3  # 0.05 does clip here


def test_clip_by_grad_scale_sets_a_divisor_only_over_the_limit():
    from frugal_lm.engine.trainer import _clip_by_grad_scale

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)
    assert float(_clip_by_grad_scale(opt, 10.0)) == pytest.approx(5.0)
    assert getattr(opt, "grad_scale", None) is None  # under the limit: the kernel divides by nothing
    assert float(_clip_by_grad_scale(opt, 2.0)) == pytest.approx(5.0)
    assert float(opt.grad_scale) == pytest.approx(2.5, rel=1e-6)  # 5 / 2: the gradients come out at norm 2


def test_training_evaluates_label_tasks_in_the_training_precision_and_reuses_the_best_for_the_plot(
        tiny_encoder_dir, sentiment_files, tmp_path, monkeypatch):
    # bf16 on a CPU autocasts the loop's evaluations of a classifier (as predict casts the exported model);
    # the confusion plot comes from the best evaluation, not a fifth pass, and that evaluation is the exported
    # weights' own (load_best put them back): lr 0.1 makes the last evaluation worse than the best.
    from frugal_lm.engine.run import load_run
    from frugal_lm.tasks.classify import ClassifyTask

    seen: list[bool] = []
    plotted: list[dict] = []
    evaluate, finish = ClassifyTask.evaluate, ClassifyTask.finish

    def spy_evaluate(self, model, records=None, device=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return evaluate(self, model, records, device)

    def spy_finish(self, model, run_dir, metrics=None):
        finish(self, model, run_dir, metrics)
        plotted.append(metrics)

    monkeypatch.setattr(ClassifyTask, "evaluate", spy_evaluate)
    monkeypatch.setattr(ClassifyTask, "finish", spy_finish)
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=4, eval_every=6, lr=0.1,
                      warmup_ratio=0.0, precision="bf16")
    summary = train(cfg, progress=False)
    assert seen == [True] * 4  # 48 rows / 8 = 6 steps an epoch: four evaluations, none after the loop
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000
    assert summary["best_step"] < summary["steps"] and summary["best"]["loss"] != summary["final"]["loss"]
    _, task, model = load_run(tmp_path / "run")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = evaluate(task, model, task.read(str(sentiment_files[1])))
    assert plotted[0]["confusion"] == again["confusion"] == summary["best"]["confusion"]
    assert plotted[0]["loss"] == pytest.approx(again["loss"], abs=2e-3)


def test_language_model_tasks_evaluate_in_fp32_during_training():
    from frugal_lm.config import load_config
    from frugal_lm.tasks import get_task

    for name in ("clm", "pretrain"):  # their perplexities compare with `frugal score`, across runs
        assert get_task(name)(load_config(sets=[f"task={name}"])).eval_autocast() is False
    classify = get_task("classify")(load_config(sets=["task=classify"]))
    assert classify.eval_autocast() is True
    classify.method = "fewshot"  # its head is fitted on fp32 features at the end
    assert classify.eval_autocast() is False
