"""Benchmark frugal's n-gram models (modified Kneser-Ney) on Penn Treebank against NLTK and KenLM.

For each order (3 and 5 by default), in a fresh subprocess per measurement so that peak memory is separate:

* frugal: train on ptb.train.txt and write the ARPA file (timed together), then score ptb.test.txt;
* frugal (ARPA): load the written ARPA file and score the test set;
* kenlm: load frugal's ARPA file with the ``kenlm`` Python module and score the test set (checks the file and
  gives query parity; KenLM's own ``lmplz`` figures are printed as references, not rerun);
* NLTK ``KneserNeyInterpolated``: fit on the same training text; its scoring takes ~0.25 s a token, so
  only the first ``--nltk-sentences`` test sentences are scored (frugal scores the same slice) and its
  full-test time is extrapolated from that slice, labelled as such.

Every test line is a sentence followed by ``</s>``; perplexity = 10 ** (-sum log10 p / tokens), tokens
counting ``</s>``. The corpus's literal ``<unk>`` is an ordinary word in every system here.

Usage: python benchmarks/bench_ngram.py [--data DIR] [--orders 3 5] [--nltk-sentences 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KENLM_LMPLZ = {3: 148.28, 5: 141.19}  # reference: KenLM lmplz on PTB test, literal <unk> as an ordinary word


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _test_sentences(data: Path) -> list[str]:
    with open(data / "ptb.test.txt", encoding="utf-8") as f:
        return [line for line in f if line.split()]


def child_frugal(data: Path, order: int, arpa: Path, n_slice: int) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from frugal_lm.lm.ngram import train

    t0 = time.perf_counter()
    model = train([data / "ptb.train.txt"], order)
    t_est = time.perf_counter()
    model.save(arpa)
    t1 = time.perf_counter()
    test = _test_sentences(data)
    total = model.score_corpus(test)
    t2 = time.perf_counter()
    sl = model.score_corpus(test[:n_slice])
    t3 = time.perf_counter()
    return {"train_s": t_est - t0, "write_s": t1 - t_est, "train_write_s": t1 - t0, "score_s": t2 - t1,
            "text_to_ppl_s": (t_est - t0) + (t2 - t1), "ppl": total.perplexity, "tokens": total.tokens,
            "slice_ppl": sl.perplexity, "slice_tokens": sl.tokens, "slice_score_s": t3 - t2,
            "ngrams": model.counts, "discounts": model.stats["discounts"],
            "arpa_mb": arpa.stat().st_size / 2**20, "peak_mb": _peak_mb()}


def child_frugal_load(data: Path, arpa: Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from frugal_lm.lm.ngram import NgramModel

    t0 = time.perf_counter()
    model = NgramModel(arpa)
    t1 = time.perf_counter()
    total = model.score_corpus(_test_sentences(data))
    return {"load_s": t1 - t0, "score_s": time.perf_counter() - t1, "ppl": total.perplexity,
            "peak_mb": _peak_mb()}


def child_kenlm(data: Path, arpa: Path) -> dict:
    import kenlm

    t0 = time.perf_counter()
    model = kenlm.Model(str(arpa))
    t1 = time.perf_counter()
    log10_prob, tokens = 0.0, 0
    for line in _test_sentences(data):
        log10_prob += model.score(line.strip(), bos=True, eos=True)
        tokens += len(line.split()) + 1
    return {"load_s": t1 - t0, "score_s": time.perf_counter() - t1, "ppl": 10 ** (-log10_prob / tokens),
            "tokens": tokens, "peak_mb": _peak_mb()}


def child_nltk(data: Path, order: int, n_slice: int) -> dict:
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    with open(data / "ptb.train.txt", encoding="utf-8") as f:
        sents = [line.split() for line in f if line.split()]
    t0 = time.perf_counter()
    grams, vocab = padded_everygram_pipeline(order, sents)
    lm = KneserNeyInterpolated(order)
    lm.fit(grams, vocab)
    t1 = time.perf_counter()
    log2_prob, tokens = 0.0, 0
    for line in _test_sentences(data)[:n_slice]:
        padded = ["<s>"] * (order - 1) + line.split() + ["</s>"]
        for i in range(order - 1, len(padded)):
            log2_prob += lm.logscore(padded[i], padded[i - order + 1:i])
            tokens += 1
    t2 = time.perf_counter()
    return {"fit_s": t1 - t0, "slice_score_s": t2 - t1, "slice_tokens": tokens,
            "slice_ppl": 2 ** (-log2_prob / tokens) if math.isfinite(log2_prob) else math.inf,
            "peak_mb": _peak_mb()}


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptb",
                    help="folder with ptb.train.txt and ptb.test.txt")
    ap.add_argument("--orders", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--nltk-sentences", type=int, default=5, help="test sentences NLTK scores (it is slow)")
    ap.add_argument("--skip-nltk", action="store_true")
    ap.add_argument("--json", type=Path, help="also write all figures here as JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, rest = args.child[0], args.child[1:]
        data = Path(rest[0])
        if kind == "frugal":
            out = child_frugal(data, int(rest[1]), Path(rest[2]), int(rest[3]))
        elif kind == "frugal_load":
            out = child_frugal_load(data, Path(rest[1]))
        elif kind == "kenlm":
            out = child_kenlm(data, Path(rest[1]))
        else:
            out = child_nltk(data, int(rest[1]), int(rest[2]))
        print(json.dumps(out))
        return

    data = args.data.resolve()
    for name in ("ptb.train.txt", "ptb.test.txt"):
        if not (data / name).is_file():
            raise SystemExit(f"error: {data / name} not found (set --data)")
    results: dict = {"data": str(data), "nltk_sentences": args.nltk_sentences, "orders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for order in args.orders:
            arpa = Path(tmp) / f"ptb.{order}.arpa"
            r: dict = {"frugal": _run_child("frugal", str(data), str(order), str(arpa),
                                            str(args.nltk_sentences))}
            r["frugal_arpa"] = _run_child("frugal_load", str(data), str(arpa))
            r["kenlm_query"] = _run_child("kenlm", str(data), str(arpa))
            if not args.skip_nltk:
                n = _run_child("nltk", str(data), str(order), str(args.nltk_sentences))
                per_token = n["slice_score_s"] / n["slice_tokens"]
                n["score_full_s_extrapolated"] = per_token * r["frugal"]["tokens"]
                n["text_to_ppl_s_extrapolated"] = n["fit_s"] + n["score_full_s_extrapolated"]
                r["nltk"] = n
            results["orders"][order] = r
            print(f"order {order} done", file=sys.stderr, flush=True)
            os.remove(arpa)
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _table(results: dict) -> str:
    rows = ["| order | system | test ppl | KenLM lmplz ppl | train (+ARPA write) s | score test s | "
            "text → test ppl s | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    slices = []
    for order, r in results["orders"].items():
        f, a, k = r["frugal"], r["frugal_arpa"], r["kenlm_query"]
        ref = KENLM_LMPLZ.get(int(order), math.nan)
        rows.append(f"| {order} | frugal | {f['ppl']:.2f} | {ref:.2f} | "
                    f"{f['train_s']:.1f} (+{f['write_s']:.1f}) | {f['score_s']:.2f} | "
                    f"{f['text_to_ppl_s']:.1f} | {f['peak_mb']:.0f} |")
        rows.append(f"| {order} | frugal, from its ARPA | {a['ppl']:.2f} | | load {a['load_s']:.1f} | "
                    f"{a['score_s']:.2f} | | {a['peak_mb']:.0f} |")
        rows.append(f"| {order} | kenlm module, frugal's ARPA | {k['ppl']:.2f} | | load {k['load_s']:.1f} | "
                    f"{k['score_s']:.2f} | | {k['peak_mb']:.0f} |")
        if "nltk" in r:
            n = r["nltk"]
            rows.append(f"| {order} | NLTK KneserNeyInterpolated | n/a (slice below) | | {n['fit_s']:.1f} | "
                        f"{n['score_full_s_extrapolated']:,.0f} (extrapolated) | "
                        f"{n['text_to_ppl_s_extrapolated']:,.0f} (extrapolated) | {n['peak_mb']:.0f} |")
            speedup = n["text_to_ppl_s_extrapolated"] / f["text_to_ppl_s"]
            slices.append(f"| {order} | {n['slice_tokens']} | {f['slice_ppl']:.2f} | {n['slice_ppl']:.2f} | "
                          f"{f['slice_score_s'] / f['slice_tokens'] * 1e6:.0f} | "
                          f"{n['slice_score_s'] / n['slice_tokens'] * 1e6:,.0f} | {speedup:,.0f}x |")
    out = "\n".join(rows)
    if slices:
        tokens = next(iter(results["orders"].values()))["frugal"]["tokens"]
        out += (f"\n\nSame test slice (first {results['nltk_sentences']} sentences) for frugal and NLTK; "
                "NLTK's full-test scoring time above is this slice's time per token times "
                f"{tokens} tokens.\n\n")
        out += ("| order | slice tokens | frugal ppl | NLTK ppl | frugal µs/token | NLTK µs/token | "
                "text → test ppl speed-up vs NLTK |\n|---|---:|---:|---:|---:|---:|---:|\n")
        out += "\n".join(slices)
    return out


if __name__ == "__main__":
    main()
