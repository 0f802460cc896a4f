"""Screening (issue 11): frugal few-shot, then cross-entropy fine-tuning of body + head (LP-FT).

Stage 1 is `classify.method=fewshot` as shipped (contrastive stage + L-BFGS head); stage 2 fine-tunes the body
and the fitted head together with cross-entropy (LP-FT: linear probe, then fine-tune; Kumar et al., ICLR 2022)
and reports dev accuracy after 1, 2, 4, 6 and 8 epochs. A plain torch loop, not the engine: it measures
whether such a stage would pay before it is built. One torch thread; JSON lines on stdout.

    python benchmarks/screen_fewshot_lpft.py sst2 64 0,1,2 2e-5,5e-5 > lpft_sst2.jsonl
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402

from frugal_lm.cli_cv import sample_per_class  # noqa: E402
from frugal_lm.config import load_config  # noqa: E402
from frugal_lm.engine.run import load_run  # noqa: E402
from frugal_lm.engine.run import train as run_train  # noqa: E402
from frugal_lm.tasks import fewshot  # noqa: E402

EVAL_EPOCHS = (1, 2, 4, 6, 8)


def fine_tune(task, model, train_examples, dev_records, lr: float, seed: int, emit) -> None:
    """CE through the few-shot head (normalised mean pooling), batches of 16, embeddings frozen."""
    params = [p for n, p in model.named_parameters() if "embeddings" not in n]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    collate = task.collator()
    seconds = 0.0
    for epoch in range(1, max(EVAL_EPOCHS) + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_examples), generator=gen).tolist()
        for i in range(0, len(order), 16):
            batch = collate([train_examples[j] for j in order[i:i + 16]])
            loss = torch.nn.functional.cross_entropy(fewshot.head_logits(model, batch), batch["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad()
        seconds += time.perf_counter() - t0
        if epoch in EVAL_EPOCHS:
            model.eval()
            emit(lr=lr, epoch=epoch, acc=task.evaluate(model, dev_records)["accuracy"], ft_s=seconds)


def shipped_run(pool: list, dev: list, size: int, seed: int, tmp: str) -> tuple:
    """The few-shot run as shipped on a `size`-per-class sample of `pool` (seed `seed`), in folder `tmp`:
    (task, model, train file, dev file, seconds of the run)."""
    train = [pool[i] for i in sample_per_class([lab for _, lab in pool], size, seed)]
    train_file = bf.write_tsv(Path(tmp) / "train.tsv", train)
    dev_file = bf.write_tsv(Path(tmp) / "dev.tsv", dev)
    cfg = load_config(overrides={"output": f"{tmp}/run", "model": {"name": "minilm", "max_length": 64},
                                 "data": {"train": str(train_file)}, "train": {"seed": seed}},
                      sets=["classify.method=fewshot"])
    t0 = time.perf_counter()
    run_train(cfg, progress=False)
    stage = time.perf_counter() - t0
    _, task, model = load_run(cfg.output)
    return task, model, train_file, dev_file, stage


def main() -> None:
    torch.set_num_threads(1)
    name, size = sys.argv[1], int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    lrs = [float(x) for x in sys.argv[4].split(",")]
    pool, dev = bf.SETS[name]()
    for seed in seeds:

        def emit(seed: int = seed, **row) -> None:
            print(json.dumps({"set": name, "seed": seed, **row}), flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            task, model, train_file, dev_file, stage = shipped_run(pool, dev, size, seed, tmp)
            dev_records = task.read(str(dev_file))
            emit(lr=None, epoch=0, acc=task.evaluate(model, dev_records)["accuracy"], stage_s=stage)
            examples = task.encode(task.read(str(train_file)))
            for lr in lrs:
                fine_tune(task, copy.deepcopy(model), examples, dev_records, lr, seed, emit)


if __name__ == "__main__":
    main()
