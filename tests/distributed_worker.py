"""Run under `torchrun --nproc-per-node 2` by test_distributed.py: engine work that needs several processes.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py SPEC.json

SPEC.json: {"model": dir, "train": file, "eval": file, "partial": run_dir, "resume": run_dir, "shards": dir,
            "gpt2": dir, "texts": [str]}
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

torch.set_num_threads(1)

from conftest import make_config  # noqa: E402
from frugal_lm.engine.distributed import process_state  # noqa: E402
from frugal_lm.engine.run import train  # noqa: E402


def config(spec: dict, output: str, **keys):
    cfg = make_config(Path(spec["model"]), (Path(spec["train"]), Path(spec["eval"])), Path(output), **spec["keys"],
                      **keys)
    cfg.options.method = "finetune"
    return cfg


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())

    # registered before the engine's own exit handler, so run after it (atexit is last-in, first-out): records
    # whether the process group is gone before interpreter teardown, where gloo's threads can abort the process
    def at_exit() -> None:
        alive = torch.distributed.is_initialized()
        (Path(spec["shards"]) / f"exit{os.environ['RANK']}.json").write_text(json.dumps({"group_alive": alive}))

    atexit.register(at_exit)
    ps = process_state()
    assert ps.num_processes == 2, ps.num_processes
    # a run checkpointed by 2 processes, to be resumed by 1
    train(config(spec, spec["partial"], grad_accum=1), progress=False, stop_at_step=2)
    # a run checkpointed by 1 process (accumulating 2), resumed here by 2
    train(config(spec, spec["resume"], grad_accum=2), resume=True, progress=False)
    # evaluation is sharded: each process computes its own batches, every process gets all results
    from frugal_lm.engine.inference import map_batches
    from frugal_lm.engine.run import _build

    task, model = _build(config(spec, spec["partial"] + "-eval", grad_accum=1))
    seen: list[int] = []

    def fn(m, batch):
        rows = [int(r) for r in batch["row"]]
        seen.extend(rows)
        return rows

    examples = [{**e, "row": i} for i, e in enumerate(task.eval_set)]
    base = task.collator()

    def collate(rows):
        batch = base([{k: v for k, v in r.items() if k != "row"} for r in rows])
        batch["row"] = torch.tensor([r["row"] for r in rows])
        return batch

    results = map_batches(model, examples, collate, 3, fn)
    # plain-text perplexity (the clm task's evaluation) is sharded the same way: record the windows run here
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from frugal_lm.lm.scoring import score_causal

    lm = AutoModelForCausalLM.from_pretrained(spec["gpt2"]).eval()
    windows: list[list[int]] = []

    def record(_module, _args, kwargs):
        for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
            windows.append(ids[mask.bool()].tolist())

    lm.register_forward_pre_hook(record, with_kwargs=True)
    scores = score_causal(lm, AutoTokenizer.from_pretrained(spec["gpt2"]), spec["texts"], batch_size=2,
                          max_length=8, stride=4)
    out = Path(spec["shards"]) / f"rank{ps.process_index}.json"
    out.write_text(json.dumps({"computed": seen, "results": results, "windows": windows,
                               "scores": [[s.logprob, s.tokens, s.words, s.token_ids] for s in scores]}))


if __name__ == "__main__":
    main()
