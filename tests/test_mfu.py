"""Model-FLOPs utilisation: the FLOP count of a training step and the figure in metrics.json."""

from __future__ import annotations

import json

from conftest import make_config
from frugal_lm.engine.mfu import non_embedding_parameters, peak_flops, training_flops
from frugal_lm.engine.run import train


def test_flops_count_matmul_parameters_and_attention(tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2)
    emb = model.bert.embeddings
    tables = emb.word_embeddings.weight.numel() + emb.position_embeddings.weight.numel() \
        + emb.token_type_embeddings.weight.numel()
    n = sum(p.numel() for p in model.parameters()) - tables
    assert non_embedding_parameters(model) == n
    c = model.config
    # 3 rows, 30 real tokens: 10 per row on average
    assert training_flops(model, 30, 3) == 6 * n * 30 + 12 * c.num_hidden_layers * c.hidden_size * 10 * 30


def test_tied_output_head_counts_as_a_matmul(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert model.lm_head.weight is model.transformer.wte.weight
    total = sum(p.numel() for p in model.parameters())  # counts the tied matrix once
    assert non_embedding_parameters(model) == total - model.transformer.wpe.weight.numel()


def test_run_reports_mfu_against_the_measured_peak(tiny_encoder_dir, sentiment_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=1)
    summary = train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["peak_flops_per_s"] == summary["peak_flops_per_s"] == round(peak_flops("no"), 1)
    assert 1e8 < saved["peak_flops_per_s"] < 1e14  # a CPU's matmul rate, not a unit slip
    # the achieved rate is the model's FLOPs over the training seconds, and well under the peak
    assert 0 < saved["mfu"] < 1
    assert abs(saved["mfu"] - saved["model_flops_per_s"] / saved["peak_flops_per_s"]) < 1e-4
    # ... computed on the real tokens the run trained on (its tokens/s), not on padded ones
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    per_s = training_flops(model, saved["train_tokens_per_s"], saved["train_examples_per_s"])
    assert abs(saved["model_flops_per_s"] - per_s) / per_s < 1e-6
