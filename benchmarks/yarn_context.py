"""YaRN's long-context effect on a model trained here: passkey retrieval and perplexity beyond the trained window.

    python recipes/quickstart.py                                # outputs/quickstart/pretrain (max_length 256)
    python recipes/pretrain.py --config recipes/tiny/passkey.yaml   # outputs/tiny/passkey: learns to copy a key
    python benchmarks/yarn_context.py --threads 2
    python benchmarks/yarn_context.py --threads 2 --limit 10 --sequences 8
    python benchmarks/yarn_context.py --model outputs/my_pretrain --trained_length 512 --factors 2 4

The model folder (`--model`, pretrained with context `--trained_length`) is loaded once as saved (`plain`, the
default RoPE) and once per `--factors` value with YaRN (`yarn-<factor>`): `rope_parameters={"rope_type": "yarn",
"rope_theta": <saved>, "factor": F, "original_max_position_embeddings": trained_length}` passed to
`AutoModelForCausalLM.from_pretrained`, so transformers' `ROPE_INIT_FUNCTIONS["yarn"]` computes the frequencies and
the attention (cos/sin) scaling; `--attention_factor`, `--beta_fast` and `--beta_slow` are passed on when given
(transformers' defaults otherwise: `0.1 * ln(F) + 1`, 32, 1; upstream MiniMind uses attention_factor 1.0).
`max_position_embeddings` is raised to cover the longest context measured. Nothing is trained.

Measured per variant, greedy, `torch.no_grad()`:

- passkey accuracy per split: the curriculum's passkey prompts (`ensure_curriculum(seed)["passkey"]["eval"]`, split
  x1/x2/x4/x8 ~ 1x/2x/4x/8x a 256-token window), BOS + raw text, 8 new tokens, scored by
  `minimind_hf.evaluation` (the continuation up to its first sentence end must equal the key). `--limit N` keeps the
  first N records of each split. The mean prompt length in tokens (BOS included) is reported per split.
- perplexity per context length L = trained_length x `--multiples`: `--sequences` rows of exactly L tokens, BOS then
  held-out documents' ids each followed by EOS, concatenated (the last one cut at L; each row starts at the next
  document). Held-out documents: the curriculum's `pretrain/heldout.jsonl`. `ppl` is exp(mean token NLL) over
  every predicted position; `tail` is the same over the LAST trained_length targets of each row, the positions beyond the trained window (at L equal to the
  trained length it covers every predicted position, so equals `ppl`).

Writes `<output_dir>/yarn_context.json` (atomically) and `yarn_context.png` (passkey accuracy vs context multiple,
perplexity vs context length, a line per variant), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import minimind_hf  # noqa: F401  (registers the Auto classes)
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.evaluation import load_eval_records, load_texts, make_generate_fn, score_completions, split_means
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import write_json

PLAIN = "plain"


def variant_name(factor: float | None) -> str:
    return PLAIN if factor is None else f"yarn-{factor:g}"


def split_multiple(split: str) -> float:
    """`"x4"` -> 4.0 (the passkey split's context multiple)."""
    return float(split.lstrip("x"))


# ----------------------------------------------------------------------------------------------------------- data


def build_sequences(tokenizer, texts: list[str], length: int, count: int) -> torch.Tensor:
    """`count` rows of exactly `length` token ids: BOS, then documents (each followed by EOS) taken in order from
    `texts` (cycling when they run out), the last one cut at `length`; each row starts at the next document."""
    if not texts:
        raise ValueError("no held-out texts")
    encoded: dict[int, list[int]] = {}
    rows, cursor = [], 0
    for _ in range(count):
        row = [tokenizer.bos_token_id]
        while len(row) < length:
            index = cursor % len(texts)
            if index not in encoded:
                encoded[index] = tokenizer(texts[index], add_special_tokens=False)["input_ids"]
            row += encoded[index] + [tokenizer.eos_token_id]
            cursor += 1
        rows.append(row[:length])
    return torch.tensor(rows, dtype=torch.long)


def passkey_records(seed: int, limit: int | None) -> list[dict]:
    """The curriculum's passkey eval records, the first `limit` of each split (all when `limit` is None)."""
    records = load_eval_records(ensure_curriculum(seed=seed)["passkey"]["eval"])
    if limit is None:
        return records
    kept, seen = [], {}
    for record in records:
        seen[record["split"]] = seen.get(record["split"], 0) + 1
        if seen[record["split"]] <= limit:
            kept.append(record)
    return kept


def prompt_lengths(tokenizer, records: list[dict]) -> list[int]:
    """Each record's prompt length in tokens (BOS + text, as generated)."""
    return [len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) + 1 for r in records]


# ---------------------------------------------------------------------------------------------------------- model


def rope_parameters(base: dict, factor: float | None, trained_length: int, **yarn) -> dict:
    """The saved RoPE dict for the plain variant; a YaRN dict (saved `rope_theta`) for a factor. `yarn` extras
    (`attention_factor`, `beta_fast`, `beta_slow`) are passed on when not None."""
    if factor is None:
        return dict(base)
    parameters = {
        "rope_type": "yarn",
        "rope_theta": base["rope_theta"],
        "factor": float(factor),
        "original_max_position_embeddings": int(trained_length),
    }
    parameters.update({key: value for key, value in yarn.items() if value is not None})
    return parameters


def load_variant(model_dir, factor: float | None, trained_length: int, max_positions: int, **yarn):
    """The saved model with YaRN at `factor` (None: RoPE as saved), `max_position_embeddings` at least
    `max_positions`, in eval mode. The model's rotary module computes the frequencies and attention scaling with
    transformers' RoPE init functions from these `rope_parameters`."""
    config = AutoConfig.from_pretrained(model_dir)
    return AutoModelForCausalLM.from_pretrained(
        model_dir,
        rope_parameters=rope_parameters(config.rope_parameters, factor, trained_length, **yarn),
        max_position_embeddings=max(max_positions, config.max_position_embeddings),
    ).eval()


def rotary_summary(model) -> dict:
    rotary = model.model.rotary_emb
    return {
        "rope_parameters": dict(model.config.rope_parameters),
        "max_position_embeddings": model.config.max_position_embeddings,
        "attention_scaling": float(rotary.attention_scaling),
        "inv_freq_first": float(rotary.inv_freq[0]),
        "inv_freq_last": float(rotary.inv_freq[-1]),
    }


# ------------------------------------------------------------------------------------------------------- measures


def token_nll(model, sequences: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-target NLL, shape `(rows, length - 1)`: target t+1 predicted from tokens 0..t."""
    out = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            ids = sequences[start : start + batch_size].to(model.device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            out.append(nll.cpu())
    return torch.cat(out)


def perplexity(model, sequences: torch.Tensor, trained_length: int, batch_size: int = 4) -> dict:
    """`ppl` over every predicted position and `tail` over the last `trained_length` targets of each row."""
    nll = token_nll(model, sequences, batch_size)
    tail = nll[:, -min(trained_length, nll.shape[1]) :]
    return {
        "ppl": math.exp(nll.mean().item()),
        "tail": math.exp(tail.mean().item()),
        "nll": nll.mean().item(),
        "tail_nll": tail.mean().item(),
        "targets": nll.numel(),
    }


def passkey_accuracy(records: list[dict], generate_fn) -> dict[str, float]:
    """Mean passkey score per split (and `all`) of `generate_fn`'s completions."""
    completions = generate_fn(records)
    return split_means(records, score_completions(records, completions))


# ------------------------------------------------------------------------------------------------------- reporting


def markdown_table(results: dict) -> str:
    splits = results["splits"]
    lengths = results["lengths"]
    trained = results["trained_length"]
    header = ["variant", *(f"passkey {s}" for s in splits), *(f"ppl@{n}" for n in lengths)]
    header += [f"tail ppl@{n}" for n in lengths if n > trained]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, variant in results["variants"].items():
        cells = [name, *(f"{variant['passkey'][s]:.2f}" for s in splits)]
        cells += [f"{variant['perplexity'][str(n)]['ppl']:.2f}" for n in lengths]
        cells += [f"{variant['perplexity'][str(n)]['tail']:.2f}" for n in lengths if n > trained]
        lines.append("| " + " | ".join(cells) + " |")
    tokens = ", ".join(f"{s} {results['prompt_tokens'][s]:.0f}" for s in splits)
    lines.append("")
    lines.append(f"passkey mean prompt tokens: {tokens}; records per split: {results['records_per_split']}")
    lines.append(f"perplexity: {results['sequences']} rows per length, texts from {results['text_source']}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    splits, lengths = results["splits"], results["lengths"]
    for name, variant in results["variants"].items():
        left.plot([split_multiple(s) for s in splits], [variant["passkey"][s] for s in splits], marker="o", label=name)
        right.plot(lengths, [variant["perplexity"][str(n)]["ppl"] for n in lengths], marker="o", label=name)
    right.axvline(results["trained_length"], color="grey", linestyle=":", label="trained length")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        axis.legend()
    left.set(xlabel="context multiple of the trained window", ylabel="passkey accuracy", ylim=(-0.05, 1.05))
    right.set(xlabel="context length (tokens)", ylabel="perplexity")
    right.set_yscale("log")
    fig.suptitle(f"YaRN on {Path(results['model']).name} (trained length {results['trained_length']})")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------ main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/tiny/passkey", help="pretrained model folder")
    parser.add_argument("--trained_length", type=int, default=256, help="the model's pretraining max_length")
    parser.add_argument("--factors", type=float, nargs="+", default=[2, 4, 8], help="YaRN factors to compare")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4, 8], help="perplexity lengths / trained")
    parser.add_argument("--sequences", type=int, default=16, help="rows per perplexity length")
    parser.add_argument("--batch_size", type=int, default=4, help="rows per perplexity forward")
    parser.add_argument("--generate_batch_size", type=int, default=8, help="passkey prompts per generate call")
    parser.add_argument("--limit", type=int, default=None, help="passkey records per split (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="curriculum seed")
    parser.add_argument("--attention_factor", type=float, default=None, help="YaRN attention factor (default: HF's)")
    parser.add_argument("--beta_fast", type=float, default=None)
    parser.add_argument("--beta_slow", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU intra-op threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output_dir", default="outputs/yarn_context")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        sys.exit(
            f"yarn_context: no model at {model_dir}; run the CPU quickstart (python recipes/quickstart.py), then "
            "the passkey continued pretraining (python recipes/pretrain.py --config recipes/tiny/passkey.yaml) "
            "or pass --model DIR"
        )
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    trained = args.trained_length
    tokenizer = load_tokenizer(model_dir) if (model_dir / "tokenizer.json").is_file() else load_tokenizer()

    records = passkey_records(args.seed, args.limit)
    splits = sorted({r["split"] for r in records}, key=split_multiple)
    prompt_tokens = prompt_lengths(tokenizer, records)
    tokens = split_means(records, prompt_tokens)
    lengths = [trained * m for m in args.multiples]
    source = ensure_curriculum(seed=args.seed)["pretrain"]["heldout"]
    texts = load_texts(source)
    sequences = {n: build_sequences(tokenizer, texts, n, args.sequences) for n in lengths}
    max_positions = max([*lengths, 8 * trained, max(prompt_tokens) + 8, *(int(f * trained) for f in args.factors)])
    yarn = {"attention_factor": args.attention_factor, "beta_fast": args.beta_fast, "beta_slow": args.beta_slow}

    results = {
        "model": str(model_dir),
        "trained_length": trained,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "records_per_split": {s: sum(r["split"] == s for r in records) for s in splits},
        "sequences": args.sequences,
        "text_source": str(source),
        "splits": splits,
        "lengths": lengths,
        "prompt_tokens": {s: tokens[s] for s in splits},
        "variants": {},
    }
    for factor in [None, *args.factors]:
        name = variant_name(factor)
        t0 = time.perf_counter()
        model = load_variant(model_dir, factor, trained, max_positions, **yarn).to(args.device)
        generate = make_generate_fn(model, tokenizer, max_new_tokens=8, batch_size=args.generate_batch_size)
        variant = rotary_summary(model)
        variant["passkey"] = passkey_accuracy(records, generate)
        variant["perplexity"] = {str(n): perplexity(model, sequences[n], trained, args.batch_size) for n in lengths}
        variant["seconds"] = time.perf_counter() - t0
        results["variants"][name] = variant
        print(f"{name}: {variant['seconds']:.1f}s", file=sys.stderr, flush=True)
        del model
    results["seconds"] = time.perf_counter() - started

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "yarn_context.json", results)
    plot(results, out / "yarn_context.png")
    print(
        f"model={model_dir} trained_length={trained} device={args.device} threads={results['threads']} "
        f"seed={args.seed} seconds={results['seconds']:.0f}"
    )
    print(markdown_table(results))
    print(f"wrote {out / 'yarn_context.json'} and {out / 'yarn_context.png'}")
    return results


if __name__ == "__main__":
    main()
