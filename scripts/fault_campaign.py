"""Fault injection: kill `frugal train` with SIGKILL at random moments (checkpoint writes included), resume
each time, and check that the final weights and metrics equal an uninterrupted run's; then fill the "disk"
during a save and check that the previous checkpoint survives and the error says so.

    python scripts/fault_campaign.py --kills 12 --seed 0 --json /tmp/faults.json

Every run is a real `frugal train` process on a tiny random BERT (2 layers, hidden 32) and a toy sentiment
set, on CPU, one process. A kill is one of:
    random      SIGKILL at a random moment once training is under way
    checkpoint  SIGKILL as soon as a checkpoint is being written (its temporary folder exists)
    swap        SIGKILL once a new checkpoint is complete but not yet swapped in, or mid-swap
                (`.checkpoint.old` exists)
The "full disk" is a file-size limit (RLIMIT_FSIZE, set on the running process with prlimit): writes then fail
with EFBIG exactly as they fail with ENOSPC, through the same code path, without needing a small filesystem.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
POS = ["good", "great", "wonderful", "excellent", "lovely", "charming"]
NEG = ["bad", "awful", "boring", "terrible", "dull", "poor"]
FILLER = ["the", "movie", "film", "was", "a", "really", "plot", "story", "and", "very"]


def toy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, rng.randint(2, 8)) + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def setup(work: Path, steps: int) -> Path:
    """A tiny model, toy data and a config with frequent checkpoints and evaluations; returns the config."""
    from frugal_lm.models.tiny import save_tiny_bert

    model = save_tiny_bert(work / "model", [" ".join(POS + NEG + FILLER)] * 4, head="base")
    for name, n, seed in (("train.tsv", 160, 1), ("dev.tsv", 32, 2)):
        (work / name).write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in toy_rows(n, seed)))
    cfg = work / "cfg.yaml"
    cfg.write_text(f"model:\n  name: {model}\n  max_length: 32\n"
                   f"data:\n  train: {work / 'train.tsv'}\n  eval: {work / 'dev.tsv'}\n"
                   f"train:\n  epochs: 0\n  max_steps: {steps}\n  batch_size: 8\n  lr: 5.0e-3\n  eval_every: 10\n"
                   "  save_every: 2\n  log_every: 1\n  seed: 0\nclassify:\n  method: finetune\n")
    return cfg


def command(cfg: Path, run: Path, mode: str) -> list[str]:
    cmd = [sys.executable, "-m", "frugal_lm", "train", "--output", str(run), "--quiet"]
    if mode == "resume":
        return cmd + ["--resume"]
    return cmd[:4] + [str(cfg)] + cmd[4:] + (["--overwrite"] if mode == "overwrite" else [])


def start(cmd: list[str]) -> subprocess.Popen:
    def child() -> None:  # a file-size limit must fail the write, not kill the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=child)


def training(run: Path, since: float) -> bool:
    """This session is training: it has written (or, resuming, cut back) the log since it started."""
    log = run / "metrics.jsonl"
    return log.exists() and log.stat().st_mtime > since


def new_temporaries(run: Path, since: float) -> list[str]:
    """Checkpoint writes in progress that this session started (not what an earlier kill left behind)."""
    names = []
    with os.scandir(run) as entries:
        for e in entries:
            if e.name.startswith(".checkpoint.") and e.name != ".checkpoint.old":
                try:
                    if e.stat().st_mtime >= since:
                        names.append(e.name)
                except FileNotFoundError:  # swapped in or cleaned up meanwhile
                    pass
    return names


def kill_at(proc: subprocess.Popen, run: Path, kind: str, rng: random.Random) -> str:
    """Wait for the moment `kind` and SIGKILL; returns what happened ("killed" or "finished").

    Checkpoint and swap kills let a random 0-3 checkpoint writes of the session pass first, so that the run
    makes progress between kills and the kills fall at different steps."""
    started, delay, skip = None, rng.uniform(0.0, 1.5), rng.randint(0, 3)
    since = time.time()
    writes: set[str] = set()
    complete: set[str] = set()
    while proc.poll() is None:
        if started is None and training(run, since):
            started = time.time()
        if started is not None:
            temps = new_temporaries(run, since)
            writes.update(temps)
            complete.update(t for t in temps if (run / t / "checkpoint" / "state.json").exists())
            if (kind == "random" and time.time() - started >= delay) or \
                    (kind == "checkpoint" and temps and len(writes) > skip) or \
                    (kind == "swap" and len(complete) > skip and
                     ((run / ".checkpoint.old").exists() or any(t in complete for t in temps))):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed"
        time.sleep(0)  # poll as fast as we can: a checkpoint write lasts milliseconds
    return "finished"


def last_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def compare(ref: Path, run: Path) -> dict:
    """Bit-for-bit comparison of the exported weights, metrics.json's results and the training log."""
    import torch
    from safetensors.torch import load_file

    wa, wb = (load_file(str(r / "model" / "model.safetensors")) for r in (ref, run))
    same_weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    keys = ("steps", "best_step", "best", "final", "stopped")
    same_metrics = all(ma[k] == mb[k] for k in keys)
    la, lb = ([(r["type"], r["step"], r.get("loss")) for r in map(json.loads, (x / "metrics.jsonl").read_text().splitlines())]
              for x in (ref, run))
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    return {"weights_equal": same_weights, "metrics_equal": same_metrics, "log_equal": la == lb,
            "no_leftovers": not leftovers, "steps": mb["steps"], "best_step": mb["best_step"]}


def kill_campaign(cfg: Path, work: Path, kills: int, rng: random.Random) -> dict:
    run = work / "faulty"
    kinds = ["random", "checkpoint", "swap"]
    events, mode = [], "fresh"
    while sum(e["result"] == "killed" for e in events) < kills:
        kind = kinds[len(events) % 3]
        proc = start(command(cfg, run, mode))
        result = kill_at(proc, run, kind, rng)
        mid_swap = (run / ".checkpoint.old").is_dir() and not (run / "checkpoint").is_dir()
        log = run / "metrics.jsonl"
        logged = log.read_text().count("\n") if log.exists() else 0
        events.append({"kind": kind, "mode": mode, "result": result, "checkpoint_step": last_step(run),
                       "log_lines": logged, "mid_swap": mid_swap, "exit": proc.returncode})
        if result == "finished":
            if proc.returncode != 0:
                raise SystemExit(f"a resumed run failed: {proc.stderr.read()[-2000:]}")
            break
        # resume whenever a checkpoint exists, even one caught mid-swap (frugal recovers it); start again only
        # when the kill came before the first checkpoint
        saved = (run / "checkpoint").is_dir() or (run / ".checkpoint.old").is_dir()
        mode = "resume" if saved else "overwrite"
    proc = start(command(cfg, run, "resume"))
    out, err = proc.communicate()
    recovered = proc.returncode == 0
    if not recovered:
        print(err[-3000:], file=sys.stderr)
    return {"events": events, "final_exit": proc.returncode, "recovered": recovered, "run": run}


def disk_full(cfg: Path, work: Path) -> dict:
    """Hit a file-size limit once the first checkpoint exists: the run must stop with a clear error and an
    intact checkpoint, then resume to the reference result."""
    run = work / "diskfull"
    proc = start(command(cfg, run, "fresh"))
    while proc.poll() is None and last_step(run) is None:
        time.sleep(0.001)
    before = last_step(run)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
    out, err = proc.communicate()
    after = last_step(run)
    temps = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    lines = [x for x in err.splitlines() if x.strip()]
    result = {"exit": proc.returncode, "message": lines[-1] if lines else "", "traceback": "Traceback" in err,
              "checkpoint_step_before": before, "checkpoint_step_after": after, "leftovers": temps}
    proc = start(command(cfg, run, "resume"))
    proc.communicate()
    result["resumed_exit"] = proc.returncode
    result["run"] = run
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="frugal-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = setup(work, args.steps)
    ref = work / "reference"
    proc = start(command(cfg, ref, "fresh"))
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    campaign = kill_campaign(cfg, work, args.kills, rng)
    campaign["comparison"] = compare(ref, campaign.pop("run")) if campaign["recovered"] else None
    full = disk_full(cfg, work)
    full["comparison"] = compare(ref, full.pop("run")) if full["resumed_exit"] == 0 else None
    report = {"kills": campaign, "disk_full": full, "steps": args.steps, "seed": args.seed}
    killed = [e for e in campaign["events"] if e["result"] == "killed"]
    by_kind = {k: sum(e["kind"] == k for e in killed) for k in ("random", "checkpoint", "swap")}
    c = campaign["comparison"] or {}
    print(f"kills: {len(killed)} ({by_kind}; between the swap's renames: {sum(e['mid_swap'] for e in killed)}); "
          "restarts without a checkpoint: "
          f"{sum(e['mode'] == 'overwrite' for e in campaign['events'])}; recovered: {campaign['recovered']}; "
          f"weights equal: {c.get('weights_equal')}; metrics equal: {c.get('metrics_equal')}; "
          f"log equal: {c.get('log_equal')}; no temporaries left: {c.get('no_leftovers')}")
    d = full["comparison"] or {}
    print(f"disk full: exit {full['exit']}, traceback {full['traceback']}, checkpoint step "
          f"{full['checkpoint_step_before']} -> {full['checkpoint_step_after']}, leftovers {full['leftovers']}, "
          f"message: {full['message']!r}; resumed: exit {full['resumed_exit']}, weights equal "
          f"{d.get('weights_equal')}, metrics equal {d.get('metrics_equal')}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    same = ("weights_equal", "metrics_equal", "log_equal", "no_leftovers")
    ok = campaign["recovered"] and all(c.get(k) for k in same) and full["exit"] == 2 and not full["traceback"] \
        and full["resumed_exit"] == 0 and all(d.get(k) for k in same)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
