"""SFT throughput: our recipe (`recipes/sft.py`, TRL's SFTTrainer) against an upstream-MiniMind-style SFT loop.

    python benchmarks/sft_throughput.py --threads 2
    python benchmarks/sft_throughput.py --threads 1 --presets tiny minimind2-small --warmup 2 --steps 8 --json sft.json
    python benchmarks/sft_throughput.py --threads 2 --config recipes/tiny/sft_tools.yaml --steps 10  # shared prefix

All rows start from the same freshly initialised model of the preset (built once with `--seed`, saved with the
shipped tokenizer to a temporary folder that all load), train on the same dialogues (the training split of the YAML's
`curriculum_stage`, `sft` or `tools`, as the recipe loads it, with its seeded system-prompt and empty-think
augmentations, or `--data FILE.jsonl`), rows cut to the same `--max_length` and `--batch_size` dialogues per step
(default: the YAML's, 512 and 16 for tiny), on the same `--threads`. Rows, per preset:

- recipe (ours): `recipes/sft.py` as a user runs it, `main(*make_parser().parse_args_and_config(argv))` with `--config`
  (default `recipes/tiny/sft.yaml`: assistant-only loss, `train_sampling_strategy: group_by_length`, so each batch holds
  dialogues of similar length, padded to the longest), `--replay_docs 0` (dialogues only), `--max_steps` =
  `--warmup` + `--steps`, checkpointing and trackers off. Everything a step costs in the Trainer is timed: collation,
  forward, backward, clipping, the optimizer (fused AdamW, the Trainer's default), scheduler, callbacks and logging.
- unshared: only for a YAML with `shared_prefix: true` (`recipes/tiny/sft_tools.yaml`): the recipe row with
  `--shared_prefix false`, every dialogue in its own row with its own copy of the common prompt; recipe / unshared is
  the shared-prefix lever's own speed-up. (`num_tokens_fed`, which the shared-prefix collator sends with its 4D mask,
  counts the positions fed.)
- trl: the recipe as TRL leaves it: no shared prefix, and TRL's fused LM head as TRL patches it, which off Triton
  devices projects every position (prompt and padding included) tile by tile, where the recipe's
  (`minimind_hf.trainers.compact_trainer_heads`) projects the target positions only; recipe / trl is what the
  recipe's own pieces gain.
- upstream (baseline): a plain PyTorch loop as upstream MiniMind's `train_full_sft.py` runs one: each dialogue rendered
  with the chat template and tokenised, truncated and right-padded to `--max_length`, labels -100 on padding and on
  everything but the assistant spans (our training template's assistant mask: after `<|im_start|>assistant\\n` through
  `<|im_end|>` and its newline, as upstream's loss mask and the recipe's), `--batch_size` dialogues per step in a seeded
  random order, then forward with labels (no attention mask, as upstream), backward, `clip_grad_norm_(1.0)`, AdamW
  (torch's default, as upstream builds it) at upstream's cosine learning rate, `zero_grad`. Upstream tokenises in
  DataLoader workers, off the training loop: here all batches are built before the timer starts.

Each row runs in a fresh subprocess, so the allocator's state and the thread pool cannot leak from one into the next.
Timing runs from the end of optimizer step `--warmup` to the end of the last step (for the recipe a `TrainerCallback`'s
`on_step_end`, as `benchmarks/train_levers.py` times it). Columns:

- real tok/s: loss-bearing targets per second, `(labels[:, 1:] != -100).sum()` over the timed steps (the model shifts
  labels, so this is what the loss averages over: the assistant tokens of the dialogues trained on).
- pad frac: padding positions / all positions fed to the model.
- s/step: timed seconds per optimizer step.
- peak MB: growth of the process's resident-set high-water mark (`VmHWM`, reset as `benchmarks/pretrain_throughput.py`
  resets it) over its resident set just before the first step: gradients, AdamW state, activations, allocator slack.
- x upstream: real tok/s divided by that of the upstream row of the same preset.

CPU timings are noisy: pin `--threads`, keep the machine otherwise idle; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # sibling scripts import as modules (benchmarks/ is not a package)
    sys.path.insert(0, str(ROOT / "benchmarks"))
import train_levers  # noqa: E402  (run_worker, the CPU model and load average)

CONFIG = ROOT / "recipes" / "tiny" / "sft.yaml"
MODES = ("recipe", "unshared", "trl", "upstream")
DATA = "the curriculum's {stage} train split"


def load_dialogues(data: str | None, stage: str = "sft"):
    """The SFT training dialogues as the recipe loads them (`messages`, `tools`), augmentations included: `data`, or
    the curriculum's `stage` (the YAML's `curriculum_stage`)."""
    from recipes import sft

    return sft.load_datasets(sft.SFTDataArguments(dataset_files=[data] if data else None, curriculum_stage=stage))[0]


def _result(seconds: float, steps: int, real: int, positions: int, non_pad: int, peak: int, loss: float) -> dict:
    return {
        "steps": steps,
        "seconds": seconds,
        "s_per_step": seconds / steps,
        "real_tokens": real,
        "positions": positions,
        "non_pad_positions": non_pad,
        "tokens_per_s": real / seconds,
        "pad_fraction": 1 - non_pad / positions,
        "peak_bytes": peak,
        "loss": loss,
        "threads": torch.get_num_threads(),
    }


def time_recipe(recipe, trainer_name: str, argv: list[str], args, count) -> dict:
    """Runs `recipe.main` on `argv` for `warmup + steps` optimizer steps in this process (checkpointing and trackers
    off, a temporary output folder), its trainer class `recipe.<trainer_name>` wrapped with a timer; `count(inputs)`
    gives a micro-batch's (real tokens, positions, non-pad positions). The result of the steps after the warm-up, with
    the first step's loss. Everything a step costs in the Trainer is timed: collation, forward, backward, clipping, the
    optimizer, scheduler, callbacks and logging."""
    import pretrain_throughput as memory  # its peak-memory helpers
    from transformers import TrainerCallback

    last = args.warmup + args.steps
    ends, counts, losses = {}, {}, {}

    class Timer(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs):
            self.rss = memory._reset_cpu_peak()
            ends[0] = time.perf_counter()

        def on_step_end(self, train_args, state, control, **kwargs):
            ends[state.global_step] = time.perf_counter()

        def on_train_end(self, train_args, state, control, **kwargs):
            self.peak = memory._cpu_peak_bytes(self.rss)

    timer = Timer()
    base = getattr(recipe, trainer_name)

    class BenchTrainer(base):
        """The recipe's trainer plus the timer; keeps each micro-batch's counts and loss."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(timer)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
            counts.setdefault(step, []).append(count(inputs))
            losses[step] = loss.item()
            return loss

    setattr(recipe, trainer_name, BenchTrainer)
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-") as output_dir:
            argv = [
                *argv,
                "--output_dir",
                output_dir,
                "--max_steps",
                str(last),
                "--save_strategy",
                "no",
                "--report_to",
                "none",
            ]
            recipe.main(*recipe.make_parser().parse_args_and_config(argv))
    finally:
        setattr(recipe, trainer_name, base)
    if last not in ends:
        raise RuntimeError(f"training stopped after {max(ends)} of {last} steps")
    timed = [batch for step in range(args.warmup + 1, last + 1) for batch in counts[step]]
    real, positions, non_pad = (sum(column) for column in zip(*timed))
    result = _result(ends[last] - ends[args.warmup], args.steps, real, positions, non_pad, timer.peak, losses[last])
    result["first_loss"] = losses[1]
    return result


def run_recipe(args, mode: str = "recipe") -> dict:
    """`recipes/sft.py` as the row `mode` runs it (`unshared`: with `--shared_prefix false`; `trl`: that, and TRL's
    fused head as TRL leaves it, the recipe's `compact_trainer_heads` skipped) for `warmup + steps` optimizer steps in
    this process; counts of the steps after the warm-up."""
    from recipes import sft

    def count(inputs) -> tuple[int, int, int]:
        labels, mask = inputs["labels"], inputs.get("attention_mask")
        if "num_tokens_fed" in inputs:  # shared-prefix rows: a 4D mask, whose sum is not the positions fed
            non_pad = int(inputs["num_tokens_fed"])
        else:
            non_pad = int(mask.sum()) if mask is not None else labels.numel()
        return int((labels[:, 1:] != -100).sum()), labels.numel(), non_pad

    argv = ["--config", args.config, "--model_name_or_path", args._model, "--replay_docs", "0"]
    argv += ["--shared_prefix", "false"] if mode in ("unshared", "trl") else []
    argv += ["--max_length", str(args.max_length), "--per_device_train_batch_size", str(args.batch_size)]
    argv += ["--seed", str(args.seed)] + (["--dataset_files", args.data] if args.data else [])
    if mode == "trl":
        sft.compact_trainer_heads = lambda trainer, temperature=1.0: None
    shared = args._shared_prefix and mode == "recipe"
    return time_recipe(sft, "SharedPrefixSFTTrainer" if shared else "SFTTrainer", argv, args, count)


def upstream_lr(args, step: int) -> float:
    """Upstream's get_lr: cosine from lr * 1.1 down to lr / 10 over the run."""
    total = args.warmup + args.steps
    return args.learning_rate / 10 + 0.5 * args.learning_rate * (1 + math.cos(math.pi * step / total))


def upstream_order(count: int, args) -> list[int]:
    """The rows upstream's loop trains on, `(warmup + steps) * batch_size` indices into `count` rows: a fresh seeded
    shuffle per epoch, as a shuffling DataLoader draws them."""
    generator = torch.Generator().manual_seed(args.seed)
    order, needed = [], (args.warmup + args.steps) * args.batch_size
    while len(order) < needed:
        order += torch.randperm(count, generator=generator).tolist()
    return order[:needed]


def upstream_result(batches: list[dict], inputs: str, ends: list[float], args, peak: int, loss: float) -> dict:
    """The result of an upstream loop over `batches` (each with `real_tokens`, `non_pad` and its model inputs under
    `inputs`) whose step `i` ended at `ends[i + 1]` (`ends[0]`: the start): counts of the steps after the warm-up."""
    timed = batches[args.warmup :]
    real = sum(b["real_tokens"] for b in timed)
    positions = sum(b[inputs].numel() for b in timed)
    non_pad = sum(b["non_pad"] for b in timed)
    return _result(ends[-1] - ends[args.warmup], args.steps, real, positions, non_pad, peak, loss)


def upstream_batches(dialogues, tokenizer, order: list[int], max_length: int, batch_size: int) -> list[dict]:
    """Upstream's batches: `batch_size` dialogues per step in `order`, each truncated and right-padded to
    `max_length`, labels on the assistant spans only."""
    batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        ids, labels, non_pad = [], [], 0
        for index in order[start : start + batch_size]:
            row = dialogues[index]
            tools = json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]  # as TRL reads them
            encoded = tokenizer.apply_chat_template(
                row["messages"], tools=tools, return_dict=True, return_assistant_tokens_mask=True
            )
            tokens = encoded["input_ids"][:max_length]
            masks = encoded["assistant_masks"][:max_length]
            pad = max_length - len(tokens)
            non_pad += len(tokens)
            ids.append(tokens + [tokenizer.pad_token_id] * pad)
            labels.append([t if m else -100 for t, m in zip(tokens, masks)] + [-100] * pad)
        labels = torch.tensor(labels)
        batches.append(
            {
                "input_ids": torch.tensor(ids),
                "labels": labels,
                "real_tokens": int((labels[:, 1:] != -100).sum()),
                "non_pad": non_pad,
                "dialogues": order[start : start + batch_size],
            }
        )
    return batches


def run_upstream(args) -> dict:
    """Upstream's SFT loop on the same model, dialogues, row length and batch size; counts of the timed steps."""
    import pretrain_throughput as memory  # its peak-memory helpers
    from transformers import AutoModelForCausalLM

    from minimind_hf.chat_templates import training_chat_template
    from minimind_hf.tokenization import load_tokenizer

    dialogues = load_dialogues(args.data, args._stage)
    order = upstream_order(len(dialogues), args)
    with training_chat_template(load_tokenizer(args._model)) as tokenizer:
        batches = upstream_batches(dialogues, tokenizer, order, args.max_length, args.batch_size)
    model = AutoModelForCausalLM.from_pretrained(args._model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    rss = memory._reset_cpu_peak()
    ends = [time.perf_counter()]
    for step, batch in enumerate(batches):
        lr = upstream_lr(args, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    result = upstream_result(batches, "input_ids", ends, args, memory._cpu_peak_bytes(rss), loss.item())
    result["dialogues"] = [index for b in batches[args.warmup :] for index in b["dialogues"]]
    return result


def save_fresh_model(preset: str, overrides: dict, seed: int, folder: str) -> None:
    """A randomly initialised model of `preset` with the shipped tokenizer: the start of every row."""
    from minimind_hf import MiniMindConfig, MiniMindForCausalLM
    from minimind_hf.tokenization import load_tokenizer

    torch.manual_seed(seed)
    MiniMindForCausalLM(MiniMindConfig.from_preset(preset, **overrides)).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)


def spawn(mode: str, model: str, args, script: str = __file__) -> dict:
    """Runs `script` (this one, or another stage's benchmark built on it) as a worker for `mode` in a fresh process
    (`train_levers.run_worker`); its result, or `{"error": ...}`."""
    argv = ["--_worker", mode, "--_model", model, "--threads", str(args.threads), "--steps", str(args.steps)]
    argv += ["--warmup", str(args.warmup), "--config", str(args.config), "--seed", str(args.seed)]
    argv += ["--max_length", str(args.max_length), "--batch_size", str(args.batch_size)]
    argv += ["--learning_rate", str(args.learning_rate)] + (["--data", args.data] if args.data else [])
    return train_levers.run_worker(script, argv, args.threads, args.timeout)


def format_table(rows: list[dict]) -> str:
    """The results as a fixed-width text table, one row per (preset, mode)."""
    header = f"{'preset':<17}{'mode':>9}{'real tok/s':>11}{'pad frac':>9}{'s/step':>8}{'peak MB':>9}{'x upstream':>11}"
    lines = [header, "-" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['preset']:<17}{row['mode']:>9}  {row['error']}")
            continue
        ratio = f"{row['ratio']:.2f}" if row.get("ratio") is not None else "-"
        lines.append(
            f"{row['preset']:<17}{row['mode']:>9}{row['tokens_per_s']:>11.0f}{row['pad_fraction']:>9.3f}"
            f"{row['s_per_step']:>8.3f}{row['peak_bytes'] / 2**20:>9.0f}{ratio:>11}"
        )
    return "\n".join(lines)


def stage_of(namespace: dict) -> types.SimpleNamespace:
    """A stage for `main` from a benchmark script's `globals()` (tests load scripts from their paths, so a script need
    not be in `sys.modules`): its `__doc__`, `__file__`, `CONFIG`, `DATA` (the default data, in words), `run_recipe`
    (`(args, mode) -> result dict`, for every mode but upstream), `run_upstream` (`(args) -> result dict`) and its
    `MODES` (default: recipe and upstream)."""
    names = ("__doc__", "__file__", "CONFIG", "DATA", "run_recipe", "run_upstream")
    stage = types.SimpleNamespace(**{name: namespace[name] for name in names})
    stage.MODES = namespace.get("MODES", ("recipe", "upstream"))
    return stage


def main(argv: list[str] | None = None, stage: types.SimpleNamespace | None = None) -> list[dict]:
    """Runs the benchmark of `stage` (`stage_of`; default: this script's, SFT; `benchmarks/dpo_throughput.py` is
    another)."""
    stage = stage or stage_of(globals())
    parser = argparse.ArgumentParser(description=stage.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"], help="names from minimind_hf.PRESETS")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every worker")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per (preset, mode)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--config", default=str(stage.CONFIG), help="the recipe's YAML")
    parser.add_argument(
        "--data", help=f"JSONL in the recipe's format; defaults to {stage.DATA.format(stage='curriculum_stage')}"
    )
    parser.add_argument("--max_length", type=int, help="row length (default: the YAML's max_length)")
    parser.add_argument("--batch_size", type=int, help="dialogues (pairs for DPO) per step (default: the YAML's)")
    parser.add_argument("--learning_rate", type=float, help="default: the YAML's")
    parser.add_argument("--config_overrides", default="{}", help="JSON MiniMindConfig fields for the fresh model")
    parser.add_argument("--seed", type=int, default=42, help="model initialisation and upstream's shuffle")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per row before it is reported as failed")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--_worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    parser.add_argument("--_model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps needs at least 1, --warmup at least 0")
    shipped = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    args.max_length = args.max_length or shipped.get("max_length", 1024)
    args.batch_size = args.batch_size or shipped.get("per_device_train_batch_size", 8)
    args.learning_rate = args.learning_rate or float(shipped.get("learning_rate", 2e-5))
    torch.set_num_threads(args.threads)
    args._stage = shipped.get("curriculum_stage", "sft")
    args._shared_prefix = bool(shipped.get("shared_prefix"))
    if args._worker:
        result = stage.run_upstream(args) if args._worker == "upstream" else stage.run_recipe(args, args._worker)
        Path(args._result).write_text(json.dumps(result), encoding="utf-8")
        return [result]

    # A YAML that shares prompt prefixes (sft_tools.yaml) gets a row without the sharing: the lever's own ratio.
    modes = [m for m in stage.MODES if m != "unshared" or args._shared_prefix]
    load_before = train_levers.load_average()
    rows = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix="throughput-model-") as model:
            save_fresh_model(preset, json.loads(args.config_overrides), args.seed, model)
            results = {}
            for mode in modes:
                print(f"running {preset} {mode} ...", file=sys.stderr, flush=True)
                results[mode] = {"preset": preset, "mode": mode, **spawn(mode, model, args, stage.__file__)}
        base = results["upstream"]
        for row in results.values():
            ok = "error" not in row and "error" not in base
            row["ratio"] = row["tokens_per_s"] / base["tokens_per_s"] if ok else None
        rows.extend(results.values())

    print(
        f"device=cpu ({train_levers.cpu_model()}, {os.cpu_count()} cores) threads={args.threads} torch={torch.__version__} "
        f"config={os.path.relpath(args.config, ROOT)} max_length={args.max_length} batch_size={args.batch_size} "
        f"steps={args.steps} warmup={args.warmup} data={args.data or stage.DATA.format(stage=args._stage)} load_avg={load_before}"
    )
    print(format_table(rows))
    print(f"load_avg after: {train_levers.load_average()}; peak = CPU peak RSS growth during training")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
