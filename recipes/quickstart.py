"""The CPU quickstart: the `tiny` preset pretrained on the embedded curriculum (then cloze recall of held-out facts,
and the held-out questions asked as the corpus's Q/A pages ask them), then SFT, then greedy evaluation on held-out
questions, then a few sample answers. A dry run of every step on an untrained model comes first, so a broken
environment fails in seconds. Metrics go to `<output_dir>/metrics.json` and are printed.

    make quickstart
    # which runs:
    python recipes/quickstart.py --output_dir outputs/quickstart

Held-out splits (see docs/data.md): `sft_entities` asks about facts of people the SFT dialogues talk about, but facts
SFT never asked (they are only in the pretraining prose); `pretrain_only` asks about people SFT never mentions at all;
`arith` is held-out arithmetic. Each stage's YAML (`recipes/tiny/*.yaml`) holds its hyperparameters.
"""

import contextlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.evaluation import (
    evaluate_with_breakdown,
    faq_probe_records,
    language_model_scores,
    load_eval_records,
    load_texts,
    make_generate_fn,
    score,
)
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import RecipeParser, write_json
from recipes import pretrain, sft

RECIPES = Path(__file__).resolve().parent


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Where every stage and metrics.json go."})
    pretrain_config: str = field(default=str(RECIPES / "tiny/pretrain.yaml"))
    sft_config: str = field(default=str(RECIPES / "tiny/sft.yaml"))
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})
    curriculum_seed: int = field(default=0)
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder to pretrain with (default: the shipped tokenizer)."}
    )
    eval_batch_size: int = field(default=64)
    samples: int = field(default=8, metadata={"help": "Sample answers printed at the end."})


def stage_metrics(output_dir: Path, final: dict) -> dict:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    tokens = max([e.get("num_input_tokens_seen", 0) for e in history] + [e.get("num_tokens", 0) for e in history])
    runtime = final.get("train_runtime", 0.0)
    return {
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": final.get("train_loss"),
        "runtime_s": round(runtime, 1),
        "tokens": int(tokens),
        "tokens_per_s": round(tokens / runtime, 1) if runtime else None,
    }


def run_stage(module, config: str, out: Path, extra: list[str]) -> dict:
    argv = ["--config", config, "--output_dir", str(out), *extra]
    final = module.main(*module.make_parser().parse_args_and_config(argv))
    return stage_metrics(out, final)


def check_cached_decoding(model, tokenizer) -> None:
    """Greedy decoding with the KV cache must give the logits a full forward over the same tokens gives: a model and
    transformers that disagree on how the cache is passed decode wrong text without any error."""
    prompt = tokenizer("<|im_start|>user\nhello<|im_end|>\n", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **prompt,
            max_new_tokens=8,
            do_sample=False,
            min_new_tokens=8,
            output_logits=True,
            return_dict_in_generate=True,
        )
        full = model(out.sequences).logits[0, prompt["input_ids"].shape[1] - 1 : -1]
    gap = (torch.cat(out.logits) - full).abs().max().item()
    if gap > 1e-3:
        raise RuntimeError(
            f"cached greedy decoding disagrees with a full forward (max |logit gap| {gap:.3g}): this transformers "
            f"({transformers.__version__}) and the model pass the KV cache differently"
        )


def run_pipeline(
    args: QuickstartArguments,
    out: Path,
    extra: list[str],
    records: list[dict],
    cloze: list[dict],
    texts: list[str],
    say=print,
) -> dict:
    """Pretrain (then bits per byte on the held-out `texts`, cloze recall of `cloze` and the Q/A-page probe of
    `records`), SFT (then bits per byte again), then greedy evaluation of `records` and the sample answers: the metrics
    of one run."""
    extra = ["--curriculum_seed", str(args.curriculum_seed), *extra]
    say("== 1/3 pretraining the tiny model on the curriculum prose")
    tokenizer = ["--tokenizer_name_or_path", args.tokenizer_name_or_path] if args.tokenizer_name_or_path else []
    metrics = {"pretrain": run_stage(pretrain, args.pretrain_config, out / "pretrain", [*extra, *tokenizer])}
    pretrained = AutoModelForCausalLM.from_pretrained(out / "pretrain").eval()
    pretrained_tokenizer = load_tokenizer(out / "pretrain")
    metrics["text"] = {"pretrain": language_model_scores(pretrained, pretrained_tokenizer, texts)}
    complete = make_generate_fn(pretrained, pretrained_tokenizer, batch_size=args.eval_batch_size, max_new_tokens=16)
    metrics["cloze"], metrics["cloze_breakdown"] = evaluate_with_breakdown(cloze, complete)
    # the same held-out questions as chat QA, as the pretraining corpus's Q/A pages write them: what SFT starts from
    ask = make_generate_fn(pretrained, pretrained_tokenizer, batch_size=args.eval_batch_size, max_new_tokens=32)
    metrics["faq"], metrics["faq_breakdown"] = evaluate_with_breakdown(faq_probe_records(records), ask)
    say("== 2/3 supervised fine-tuning on the curriculum dialogues")
    metrics["sft"] = run_stage(
        sft, args.sft_config, out / "sft", [*extra, "--model_name_or_path", str(out / "pretrain")]
    )

    say("== 3/3 greedy evaluation on held-out questions")
    model = AutoModelForCausalLM.from_pretrained(out / "sft").eval()
    tokenizer = load_tokenizer(out / "sft")
    check_cached_decoding(model, tokenizer)
    metrics["text"]["sft"] = language_model_scores(model, tokenizer, texts)
    generate = make_generate_fn(model, tokenizer, batch_size=args.eval_batch_size, max_new_tokens=32)
    metrics["eval"], metrics["eval_breakdown"] = evaluate_with_breakdown(records, generate)

    picks, seen = [], set()
    for record in records:
        key = (record["split"], record["lang"])
        if key not in seen and len(picks) < args.samples:
            seen.add(key)
            picks.append(record)
    answers = generate(picks)
    metrics["samples"] = [
        {
            "split": r["split"],
            "question": r["prompt"][-1]["content"],
            "answer": a,
            "expected": r["answer"],
            "correct": bool(score(r, a)),
        }
        for r, a in zip(picks, answers)
    ]
    metrics["threads"] = torch.get_num_threads()
    return metrics


def dry_run(args: QuickstartArguments, out: Path, records: list[dict], cloze: list[dict], texts: list[str]) -> None:
    """Every step of the run in seconds before minutes of training: one pretraining step and one SFT step, saving and
    reloading, cached decoding against a full forward, a left-padded evaluation batch with one question per split and
    language, and the report. A broken environment (a new transformers, say) fails here, not after training."""
    dry = out / "dry_run"
    shutil.rmtree(dry, ignore_errors=True)
    one_each = [list({(r["split"], r["lang"]): r for r in split}.values()) for split in (records, cloze)]
    one_each.append(texts[:2])
    quiet = ["--max_steps", "1", "--logging_steps", "1", "--disable_tqdm", "true"]
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = run_pipeline(args, dry, quiet, *one_each, say=lambda _: None)
        metrics["wall_time_s"] = 0.0
        report(metrics, dry)
    shutil.rmtree(dry)


def main(args: QuickstartArguments) -> dict:
    start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ensure_curriculum(seed=args.curriculum_seed)
    records = load_eval_records(paths["sft"]["eval"])
    cloze = load_eval_records(paths["pretrain"]["eval"])
    texts = load_texts(paths["pretrain"]["heldout"])

    print("== 0/3 dry run: every step once on an untrained model", flush=True)
    dry_start = time.time()
    dry_run(args, out, records, cloze, texts)
    print(f"   ok in {time.time() - dry_start:.0f} s", flush=True)
    metrics = run_pipeline(args, out, [], records, cloze, texts, say=lambda line: print(line, flush=True))
    metrics["curriculum_seed"] = args.curriculum_seed
    metrics["wall_time_s"] = round(time.time() - start, 1)

    write_json(out / "metrics.json", metrics)
    report(metrics, out)
    return metrics


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def report(metrics: dict, out: Path) -> None:
    """Prints the stages' losses and throughput, held-out accuracy per split (pretrained: cloze and Q/A page; after
    SFT: chat QA) with its breakdown (per entity kind, per kind and relation, per language, with the number of
    questions), and the sample answers."""
    print(f"\n{'stage':<10}{'first loss':>11}{'last loss':>11}{'tokens':>10}{'tok/s':>9}{'seconds':>9}")
    for stage in ("pretrain", "sft"):
        m = metrics[stage]
        print(
            f"{stage:<10}{m['first_loss']:>11.3f}{m['last_loss']:>11.3f}{m['tokens']:>10}"
            f"{m['tokens_per_s'] or 0:>9.0f}{m['runtime_s']:>9.1f}"
        )
    text = metrics["text"]
    print(
        f"\nheld-out text ({text['pretrain']['documents']} documents, {text['pretrain']['bytes']} bytes): "
        + ", ".join(
            f"{stage} {text[stage]['bits_per_byte']:.3f} bits per byte (perplexity {text[stage]['perplexity']:.2f})"
            for stage in ("pretrain", "sft")
        )
    )
    columns = ("cloze", "faq", "eval")
    print(f"\nheld-out exact match:{'':<11}{'pretrained: cloze':>19}{'Q/A page':>10}{'SFT: chat QA':>16}")
    for split in sorted(set().union(*(metrics[c] for c in columns))):
        cells = [_cell(metrics[c].get(split)) for c in columns]
        print(f"  {split:<30}{cells[0]:>19}{cells[1]:>10}{cells[2]:>16}")
        groups = [metrics[f"{c}_breakdown"].get(split, {}) for c in columns]
        for group in sorted(set().union(*groups), key=lambda g: (g.startswith("lang."), g)):
            n = next(g[group]["n"] for g in groups[::-1] if group in g)
            cells = [_cell(g.get(group, {}).get("mean")) for g in groups]
            print(f"    {group + f' ({n})':<28}{cells[0]:>19}{cells[1]:>10}{cells[2]:>16}")
    print("\nsamples:")
    for s in metrics["samples"]:
        mark = "ok " if s["correct"] else "MISS"
        print(f"  [{mark}] ({s['split']}) {s['question']} -> {s['answer']!r} (expected {s['expected']!r})")
    print(f"\nwall time {metrics['wall_time_s']} s on {metrics['threads']} threads; metrics: {out / 'metrics.json'}")


def make_parser() -> RecipeParser:
    """The quickstart's arguments (defaults < YAML `--config` < command line, as every recipe)."""
    return RecipeParser((QuickstartArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
