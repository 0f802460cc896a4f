"""SmolLM2-135M-Instruct (the `smollm2` alias, from its Q4_1 GGUF) perplexity on Penn Treebank, on CPU.

Scores the first `--limit` sentences of ptb.test.txt (0 = all) with `frugal_lm.lm.scorers.load_scorer`, once
per sentence-boundary convention:

* `endoftext`: `<|endoftext|>` before and after each sentence, the alias default (SmolLM2's pretraining
  document separator);
* `chat-markers`: the tokenizer's own BOS/EOS, `<|im_start|>` / `<|im_end|>` (its chat-turn markers).

For reference, a `--ngram-order` Kneser-Ney model is trained on ptb.train.txt with `frugal_lm.lm.ngram` and
the same slice is scored through the same `load_scorer` interface (its ARPA file), so all rows share units.

Per-word perplexity = exp(-sum ln p / (whitespace words + one end-of-sentence per line)), the count an n-gram
model's `</s>` convention gives (82,430 on the full test set), so it is comparable with
`benchmarks/bench_ngram.py`. Per-token perplexity counts SmolLM2's sub-word tokens, the EOS included.
PTB is lower-cased, has `<unk>` and `N` for rare words and numbers, and no punctuation: far from the text
SmolLM2 saw, so expect its per-word perplexity to be well above a 5-gram trained on PTB itself.

Usage: python benchmarks/bench_smollm2_ppl.py [--data ../shared/data/ptb] [--limit 300] [--batch-size 16]
       [--conventions endoftext chat-markers] [--ngram-order 5] [--threads N] [--output benchmarks/results_smollm2.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICE_NOTE = "a slice: at 30-100 tokens/s on 2 shared cores the whole set (~100k tokens) takes 20-60 min"
CONVENTIONS = {"endoftext": ("<|endoftext|>", "<|endoftext|>"),
               "chat-markers": ("<|im_start|>", "<|im_end|>")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ptb"),
                    help="folder with ptb.test.txt")
    ap.add_argument("--limit", type=int, default=300, help="first N test sentences (0 = all 3,761)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--conventions", nargs="+", default=list(CONVENTIONS), choices=list(CONVENTIONS))
    ap.add_argument("--ngram-order", type=int, default=5, help="reference n-gram order (0 = none)")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results_smollm2.md"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from frugal_lm.data.readers import read_lines as read_sentences
    from frugal_lm.io import write_text
    from frugal_lm.lm.scorers import load_scorer
    from frugal_lm.lm.scoring import corpus_perplexity

    if args.threads:
        torch.set_num_threads(args.threads)
    test = read_sentences(Path(args.data) / "ptb.test.txt")
    texts = test[: args.limit] if args.limit else test
    from frugal_lm.models.gguf import cached_folder
    from frugal_lm.models.registry import resolve_model

    converted = not (cached_folder(resolve_model("smollm2")) / "config.json").exists()
    t0 = time.perf_counter()
    scorer = load_scorer("smollm2", batch_size=args.batch_size, device="cpu")
    load_s = time.perf_counter() - t0
    print(f"loaded smollm2 in {load_s:.1f} s; scoring {len(texts)} of {len(test)} sentences", file=sys.stderr)

    rows = []
    for name in args.conventions:
        tok = scorer.tokenizer
        scorer.bos_id, scorer.eos_id = (tok.convert_tokens_to_ids(t) for t in CONVENTIONS[name])
        t1 = time.perf_counter()
        corpus = corpus_perplexity(scorer.score(texts))
        secs = time.perf_counter() - t1
        bos, eos = (t.replace("|", "\\|") for t in CONVENTIONS[name])  # a bare | would split a table cell
        rows.append((f"SmolLM2, {name} (`{bos}` ... `{eos}`)", corpus, secs))
        print(f"{name}: ppl/word {corpus['ppl_word']:.2f}  ppl/token {corpus['ppl_token']:.2f}  "
              f"{secs:.0f} s ({corpus['tokens'] / secs:.0f} tokens/s)", file=sys.stderr)

    if args.ngram_order:
        import tempfile

        from frugal_lm.lm.ngram import train

        with tempfile.TemporaryDirectory() as tmp:
            arpa = Path(tmp) / "ptb.arpa"
            t1 = time.perf_counter()
            train([Path(args.data) / "ptb.train.txt"], args.ngram_order).save(arpa)
            train_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            corpus = load_scorer(str(arpa)).perplexity(texts)
            secs = time.perf_counter() - t1
        rows.append((f"{args.ngram_order}-gram KN on ptb.train (trained in {train_s:.0f} s)", corpus, secs))
        print(f"{args.ngram_order}-gram: ppl/word {corpus['ppl_word']:.2f}", file=sys.stderr)

    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    load = os.getloadavg()
    lines = [
        "# SmolLM2-135M-Instruct perplexity on Penn Treebank (CPU)",
        "",
        f"Command (from the repo root): `PYTHONPATH=src HF_HUB_OFFLINE=1 {command}`",
        "",
        f"Data: `ptb.test.txt`, first {len(texts)} of {len(test)} sentences "
        f"({'the whole test set' if len(texts) == len(test) else SLICE_NOTE}).",
        f"Model: `smollm2` alias (Q4_1 GGUF, dequantized to float32 and cached), loaded in {load_s:.1f} s"
        f"{' (including the one-off GGUF conversion)' if converted else ' (from the cache)'}.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, batch size {args.batch_size}; "
        f"load average at the end {load[0]:.1f} (other jobs shared the cores, so seconds are upper bounds).",
        "",
        "| model, boundaries | sentences | words (+1 EOS/line) | tokens (sub-word + EOS) | log10 P | ppl/token "
        "| ppl/word | seconds | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c, secs in rows:
        cells = [name, c["sentences"], f"{c['words']:,}", f"{c['tokens']:,}",
                 f"{c['log10_prob']:.1f}", f"{c['ppl_token']:.2f}", f"{c['ppl_word']:.2f}", f"{secs:.0f}",
                 f"{c['tokens'] / secs:.0f}"]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    lines += [
        "",
        "ppl/word = exp(-sum ln p / words), words = whitespace words + one end-of-sentence per line:",
        "the n-gram `</s>` convention, so SmolLM2 and the n-gram model are compared on the same words",
        "(for the n-gram model tokens = words). PTB is lower-cased with `<unk>`/`N` placeholders and no",
        "punctuation, far from SmolLM2's training text, while the n-gram model was trained on PTB itself.",
        "",
    ]
    write_text(args.output, "\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
