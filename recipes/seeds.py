"""The quickstart on several curriculum seeds (each seed is another world: other names, other facts, the same
generator), then mean, min and max of every metric over the seeds: the numbers the README quotes.

    make seeds
    # which runs:
    python recipes/seeds.py --seeds 0 1 2 3 4 --output_dir outputs/seeds

Each seed's quickstart goes to `<output_dir>/seed-<k>` (its `metrics.json` as the quickstart writes it); a seed whose
`metrics.json` already exists is read, not rerun (`--rerun true` reruns it), so an interrupted report continues where
it stopped. `--effects true` then runs the slow post-training effect tests (`tests/test_post_training_effects.py`:
LoRA, DPO, distillation, reasoning) on each seed, over that seed's quickstart SFT model, and adds their measurements
(`effects.json` per seed). The summary goes to `<output_dir>/seeds.json` and is printed as a table.
"""

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from minimind_hf.training import RecipeParser, write_json
from recipes import quickstart

ROOT = Path(__file__).resolve().parents[1]

# The rows of the printed table; seeds.json holds every numeric metric.
HEADLINE = (
    "eval.sft_entities",
    "eval.pretrain_only",
    "eval.arith",
    "eval.all",
    "cloze.sft_taught",
    "cloze.sft_entities",
    "cloze.pretrain_only",
    "faq.sft_entities",
    "faq.pretrain_only",
    "pretrain.last_loss",
    "sft.last_loss",
    "pretrain.tokens_per_s",
    "sft.tokens_per_s",
    "wall_time_s",
)


@dataclass
class SeedsArguments:
    output_dir: str = field(default="outputs/seeds", metadata={"help": "One seed-<k> folder per seed, seeds.json."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "Curriculum seeds."})
    pretrain_config: str = field(default=quickstart.QuickstartArguments.pretrain_config)
    sft_config: str = field(default=quickstart.QuickstartArguments.sft_config)
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})
    rerun: bool = field(default=False, metadata={"help": "Rerun seeds whose metrics.json exists."})
    effects: bool = field(default=False, metadata={"help": "Also run the slow post-training effect tests per seed."})
    breakdown: bool = field(default=True, metadata={"help": "Print the per-kind and per-relation rows too."})


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a nested metrics dict, under dotted names (`eval.sft_entities`,
    `eval_breakdown.pretrain_only.person.city`); a breakdown cell `{"mean", "n"}` becomes its mean."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if set(value) == {"mean", "n"}:
                flat[name] = float(value["mean"])
            else:
                flat.update(flatten(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, dict]:
    """Per metric present in every seed: mean, min, max and the value of each seed."""
    names = set.intersection(*(set(m) for m in per_seed.values()))
    return {
        name: {
            "mean": statistics.fmean(values := [per_seed[s][name] for s in sorted(per_seed)]),
            "min": min(values),
            "max": max(values),
            "seeds": {str(s): per_seed[s][name] for s in sorted(per_seed)},
        }
        for name in sorted(names)
    }


def run_quickstart(args: SeedsArguments, seed: int, out: Path) -> dict:
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and not args.rerun:
        print(f"== seed {seed}: reading {metrics_path}", flush=True)
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    print(f"== seed {seed}: quickstart into {out}", flush=True)
    return quickstart.main(
        quickstart.QuickstartArguments(
            output_dir=str(out),
            pretrain_config=args.pretrain_config,
            sft_config=args.sft_config,
            threads=args.threads,
            curriculum_seed=seed,
        )
    )


def run_effects(args: SeedsArguments, seed: int, out: Path) -> dict:
    """The slow effect tests over this seed's quickstart SFT model; their measurements, read from `effects.json`."""
    path = out / "effects.json"
    if path.exists() and not args.rerun:
        return json.loads(path.read_text(encoding="utf-8"))
    env = {
        **os.environ,
        "MINIMIND_HF_SFT_BASE": str(out / "sft"),
        "MINIMIND_HF_CURRICULUM_SEED": str(seed),
        "MINIMIND_HF_EFFECTS_REPORT": str(path),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-m", "slow", "-p", "no:cacheprovider"]
    command.append(str(ROOT / "tests" / "test_post_training_effects.py"))
    print(f"== seed {seed}: post-training effects ({' '.join(command[1:])})", flush=True)
    run = subprocess.run(command, cwd=ROOT, env=env)
    effects = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    effects["tests_passed"] = float(run.returncode == 0)
    return effects


def _row(name: str, stats: dict, seeds: list[int]) -> str:
    percent = not any(token in name for token in ("loss", "tokens", "time", "_s", "kl", "margin", "params"))
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}")
    cells = [fmt(stats[k]) for k in ("mean", "min", "max")] + [fmt(stats["seeds"][str(s)]) for s in seeds]
    return f"| {name} | " + " | ".join(cells) + " |"


def report(summary: dict[str, dict], seeds: list[int], breakdown: bool = True) -> None:
    """A Markdown table: the headline metrics, then (with `breakdown`) every per-kind and per-relation score, then the
    effect measurements when present."""
    print(f"\n{len(seeds)} seeds: " + ", ".join(map(str, seeds)))
    print("| metric | mean | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---" * (4 + len(seeds)) + "|")
    names = [n for n in HEADLINE if n in summary]
    if breakdown:
        names += [
            n
            for n in summary
            if n.startswith(("eval_breakdown.", "cloze_breakdown.", "faq_breakdown.")) and ".lang." not in n
        ]
    names += [n for n in summary if n.startswith("effects.")]
    for name in names:
        print(_row(name, summary[name], seeds))


def main(args: SeedsArguments) -> dict:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in args.seeds:
        folder = out / f"seed-{seed}"
        flat = flatten({k: v for k, v in run_quickstart(args, seed, folder).items() if k != "samples"})
        if args.effects:
            flat.update(flatten(run_effects(args, seed, folder), "effects."))
        per_seed[seed] = flat
    summary = summarize(per_seed)
    write_json(out / "seeds.json", {"seeds": args.seeds, "metrics": summary}, indent=1)
    report(summary, args.seeds, args.breakdown)
    print(f"\nsummary: {out / 'seeds.json'}")
    return summary


def make_parser() -> RecipeParser:
    return RecipeParser((SeedsArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
