"""Speed levers of the pretraining recipe on CPU: `recipes/pretrain.py` run as a user runs it, one lever per row.

    python benchmarks/train_levers.py --threads 2
    python benchmarks/train_levers.py --threads 2 --levers baseline bf16 adamw_torch --steps 20 --json levers.json
    # anything after `--` goes to every recipe run, e.g. another preset's YAML values:
    python benchmarks/train_levers.py --threads 1 --steps 10 -- --max_length 128 --per_device_train_batch_size 8

Every row is one run of the recipe, `main(*make_parser().parse_args_and_config(argv))` as the quickstart calls it,
with `--config` (default `recipes/tiny/pretrain.yaml`: the embedded curriculum, packed rows of 256 tokens, batch 16),
`--max_steps` = `--warmup` + `--steps`, a temporary `--output_dir` (the recipe's final save lands there, after the
timed steps) and checkpointing off, in a fresh subprocess of its own: torch.compile's caches (in memory and on disk),
the thread pool and the allocator's state cannot leak from one row into the next. The lever only adds recipe flags
(or, for the thread row, calls `torch.set_num_threads` with another count), so the same seed gives every row the same
model, the same batches in the same order and the same learning-rate schedule.

Rows (`--levers`; `baseline` always runs, the ratios need it):

- baseline: the YAML as shipped, `torch.set_num_threads(--threads)`: fp32, and AdamW as transformers picks it by
  default, which with torch >= 2.8 is already the fused kernel (`adamw_torch_fused`; the header prints what the
  baseline resolved to).
- bf16: `--bf16 true --use_cpu true`, CPU autocast to bfloat16 (fast where the CPU has AMX / AVX512-BF16; the header
  says which). Without `use_cpu` transformers stops with "Your setup doesn't support bf16/gpu".
- adamw_torch: `--optim adamw_torch`, the unfused (foreach) AdamW: what the fused default buys, or costs.
- compile: `--torch_compile true` (inductor; needs a C++ compiler). Compilation happens in the first steps: see the
  warm-up column (each run starts from an empty inductor cache, as a first run does), and give it a `--warmup`
  that covers any recompilation: the note under the table gives the graphs compiled and the slowest timed step.
- threads1: the baseline with `torch.set_num_threads(1)` (skipped when `--threads` is 1).
- combined: added when two or more of the rows above win (`x base` >= `--min_gain` with the final loss within
  `--loss_tol` of the baseline's): their flags together (and their thread count).

Columns: real tok/s is loss-bearing targets per second, `(labels[:, 1:] != -100).sum()` over the timed steps (as in
`benchmarks/pretrain_throughput.py`: every packed token but each document's first and the padding). Timing runs from
the end of optimizer step `--warmup` to the end of step `--warmup + --steps` (a `TrainerCallback`'s `on_step_end`),
so it holds everything a step costs in the recipe: data loading and collation, forward, backward, clipping, AdamW,
scheduler, callbacks and logging (every `logging_steps`, 10 as shipped). s/step is that time per step; warm-up s the
time from the start of training to the end of step `--warmup` (torch.compile's compilation lands there); x base the
tok/s ratio to the baseline in the same invocation; final loss the loss of the last step (the same batch in every row,
so numerics that drift, bf16's say, show here); peak MB the growth of the process's resident-set high-water mark over
its resident set at the start of training (`VmHWM` reset as `benchmarks/pretrain_throughput.py` resets it):
gradients, AdamW state, activations, compiled code and allocator slack.

Two more measurements, printed under the table:

- profile: one more baseline run with `torch.profiler` over `--profile_steps` steps after the warm-up. The step is
  split into forward + loss, backward, gradient clipping, optimizer step and the rest (data loading, zero_grad,
  scheduler, callbacks, logging); in each, the time spent in torch ops against the Python / Trainer time around them
  (the self time of the annotated ranges), then the top 10 entries by self time. The profiler slows each op down a
  little, so its step time is longer than the baseline's.
- lm_head: the share of a forward + backward spent in the LM head and the cross-entropy. The recipe's model and
  first batch (same YAML and arguments) are timed three ways, interleaved, median of `--lm_repeats`: the backbone
  alone (`model.model`), backbone + LM head (logits upcast to fp32 as the loss does), and the full model with its
  loss; fp32 and bf16 autocast. The tiny preset's LM head (6,400 x 128, tied to the embedding) holds about as many
  weights as its four blocks together, and the softmax runs over 6,400 logits per token.

CPU timings are noisy: pin `--threads`, keep the machine otherwise idle; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # sibling scripts import as modules (benchmarks/ is not a package)
    sys.path.insert(0, str(ROOT / "benchmarks"))
CONFIG = ROOT / "recipes" / "tiny" / "pretrain.yaml"
# Recipe flags per lever, added after the YAML and the user's `--` arguments.
LEVERS = {
    "baseline": [],
    # transformers refuses `bf16` without a GPU unless `use_cpu` is set (which, on a CPU-only machine, only confirms
    # what it already does: the CPU device, no pinned memory).
    "bf16": ["--bf16", "true", "--use_cpu", "true"],
    "adamw_torch": ["--optim", "adamw_torch"],
    "compile": ["--torch_compile", "true"],
    "threads1": [],
}
COMBINABLE = ("bf16", "adamw_torch", "compile", "threads1")
EXTRAS = ("profile", "lm_head")
STEP, FORWARD, BACKWARD, CLIP = "## step", "## forward + loss", "## backward", "## clip_grad_norm"
OPTIMIZER = "Optimizer.step#"  # torch's own annotation of every optimizer step


# --------------------------------------------------------------------------------------------------------------------
# Worker side: one recipe run (or the LM-head timing) in this process, results written as JSON.


def _recipe_argv(config: str, output_dir: str, extra: list[str], max_steps: int | None = None) -> list[str]:
    argv = ["--config", config, "--output_dir", output_dir, *extra]
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps), "--save_strategy", "no", "--report_to", "none"]
    return argv


def run_recipe(config: str, extra: list[str], warmup: int, steps: int, profile_steps: int = 0) -> dict:
    """Runs `recipes/pretrain.py` for `warmup + steps` optimizer steps (or `warmup + profile_steps` under the
    profiler) in this process and returns the timings, losses and token counts of the steps after the warm-up."""
    import pretrain_throughput as memory  # its peak-memory helpers
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import TrainerCallback

    from recipes import pretrain

    profiled = profile_steps > 0
    last = warmup + (profile_steps if profiled else steps)
    record = {"ends": {}, "tokens_seen": {}, "labels": {}, "losses": {}}

    class Timer(TrainerCallback):
        """Stamps the end of every optimizer step; under the profiler, profiles steps `warmup + 1 .. last`, each
        inside a `## step` range from the end of the previous step to the end of its own."""

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            record["threads"] = torch.get_num_threads()
            defaults = getattr(optimizer, "defaults", {})
            record["resolved"] = {
                "optim": str(getattr(args.optim, "value", args.optim)),
                "fused": bool(defaults.get("fused")),
                "foreach": defaults.get("foreach"),
                "bf16": args.bf16,
                "torch_compile": args.torch_compile,
            }
            record["process_peak_bytes"] = (memory._proc_status_kb("VmHWM") or 0) * 1024
            self.rss = memory._reset_cpu_peak()
            self.profiler = self.range = None
            self.step_ended(0, state)

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ended(state.global_step, state)

        def step_ended(self, step, state):
            record["ends"][step], record["tokens_seen"][step] = time.perf_counter(), state.num_input_tokens_seen
            if not profiled or step < warmup:
                return
            if self.range is not None:
                self.range.__exit__(None, None, None)
                self.range = None
            if step == warmup:
                self.profiler = profile(activities=[ProfilerActivity.CPU])
                self.profiler.start()
            if step < last:
                self.range = record_function(STEP)
                self.range.__enter__()
            elif self.profiler is not None:
                self.profiler.stop()
                record["profile"] = [
                    {"name": e.key, "calls": e.count, "total_us": e.cpu_time_total, "self_us": e.self_cpu_time_total}
                    for e in self.profiler.key_averages()
                ]
                self.profiler = None

        def on_train_end(self, args, state, control, **kwargs):
            peak = memory._proc_status_kb("VmHWM")
            record["process_peak_bytes"] = max(record["process_peak_bytes"], (peak or 0) * 1024)
            record["peak_bytes"] = memory._cpu_peak_bytes(self.rss)

    class BenchTrainer(pretrain.PretrainTrainer):
        """The recipe's trainer, plus the timer; it keeps each step's labels and loss (and, under the profiler,
        labels forward, backward and clipping)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Timer())
            if profiled:
                backward = self.accelerator.backward

                def labelled_backward(loss, **kw):
                    with record_function(BACKWARD):
                        return backward(loss, **kw)

                self.accelerator.backward = labelled_backward

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
            record["labels"].setdefault(step, []).append(inputs["labels"])
            record["losses"].setdefault(step, []).append(loss)
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not profiled:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with record_function(FORWARD):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def _clip_grad_norm(self, model):
            if not profiled:
                return super()._clip_grad_norm(model)
            with record_function(CLIP):
                return super()._clip_grad_norm(model)

    pretrain.PretrainTrainer = BenchTrainer
    with tempfile.TemporaryDirectory(prefix="train_levers-") as output_dir:
        argv = _recipe_argv(config, output_dir, extra, max_steps=last)
        pretrain.main(*pretrain.make_parser().parse_args_and_config(argv))

    ends, seen = record["ends"], record["tokens_seen"]
    if last not in ends or warmup not in ends:
        raise RuntimeError(f"training stopped after {max(ends)} of {last} steps")
    timed = range(warmup + 1, last + 1)
    seconds = ends[last] - ends[warmup]
    real = sum(int((labels[:, 1:] != -100).sum()) for step in timed for labels in record["labels"][step])
    losses = [sum(loss.item() for loss in record["losses"][step]) for step in timed]
    step_seconds = [ends[step] - ends[step - 1] for step in timed]
    result = {
        "threads": record["threads"],
        "steps": len(timed),
        "warmup": warmup,
        "seconds": seconds,
        "s_per_step": seconds / len(timed),
        "max_step_s": max(step_seconds),
        "warmup_s": ends[warmup] - ends[0],
        "real_tokens": real,
        "tokens_per_s": real / seconds,
        "input_tokens_per_s": (seen[last] - seen[warmup]) / seconds,
        "loss": losses[-1],
        "losses": losses,
        "peak_bytes": record["peak_bytes"],
        "process_peak_bytes": record["process_peak_bytes"],
        "resolved": record["resolved"],
    }
    if "torch._dynamo" in sys.modules:  # torch.compile ran: how often it compiled, and where it fell back to Python
        from torch._dynamo.utils import counters

        if counters["stats"]["unique_graphs"]:
            result["compiled_graphs"] = counters["stats"]["unique_graphs"]
            result["graph_breaks"] = sum(counters["graph_break"].values())
    if profiled:
        result["profile"] = record["profile"]
    return result


def lm_head_share(config: str, extra: list[str], warmup: int, repeats: int) -> dict:
    """Milliseconds per forward + backward of the recipe's model on its first batch: backbone alone, backbone + LM
    head, and the full model with its loss, in fp32 and in bf16 autocast (median of `repeats`, interleaved)."""
    from minimind_hf import modeling_minimind
    from minimind_hf.data import load_pretrain_dataset
    from minimind_hf.packing import PackedCollator, tokenize_and_pack
    from minimind_hf.training import build_model, recipe_tokenizer
    from recipes import pretrain

    with tempfile.TemporaryDirectory(prefix="train_levers-") as output_dir:
        data_args, training_args, model_args = pretrain.make_parser().parse_args_and_config(
            _recipe_argv(config, output_dir, extra)
        )
    tokenizer = recipe_tokenizer(model_args)
    model = build_model(model_args, tokenizer, seed=training_args.seed).train()
    batch_size, max_length = training_args.per_device_train_batch_size, training_args.max_length
    documents = load_pretrain_dataset(data_args.files("pretrain")[0], bos_token=tokenizer.bos_token)
    # Enough documents for `batch_size` full rows, packed as the recipe packs them (its default `packing: false`).
    documents = documents.select(range(min(len(documents), 64 * batch_size)))
    rows = tokenize_and_pack(documents, tokenizer, max_length)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id)([rows[i] for i in range(min(len(rows), batch_size))])
    backbone_inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}

    def backbone():
        model.model(**backbone_inputs).last_hidden_state.float().sum().backward()

    def with_head():
        model.lm_head(model.model(**backbone_inputs).last_hidden_state).float().sum().backward()

    def full():
        model(**batch, use_cache=False).loss.backward()

    source = inspect.getsource(modeling_minimind).lower()
    forward = inspect.signature(modeling_minimind.MiniMindForCausalLM.forward).parameters
    result = {
        "batch": list(batch["input_ids"].shape),
        "real_tokens": int((batch["labels"][:, 1:] != -100).sum()),
        "threads": torch.get_num_threads(),
        "vocab_size": model.config.vocab_size,
        "hidden_size": model.config.hidden_size,
        "head_params": model.lm_head.weight.numel(),
        "block_matmul_params": sum(
            m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)
        ),
        "model_options": {
            "chunked_loss": "chunk" in source,
            "liger": "liger" in source,
            "logits_to_keep": "logits_to_keep" in forward,
            "num_items_in_batch": "num_items_in_batch" in source,
        },
    }
    for dtype in ("fp32", "bf16"):
        times = {"backbone": [], "with_head": [], "full": []}
        for repeat in range(warmup + repeats):
            for name, fn in (("backbone", backbone), ("with_head", with_head), ("full", full)):
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    fn()
                if repeat >= warmup:
                    times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        result[dtype] = {
            **{f"{name}_ms": value for name, value in ms.items()},
            "head_ms": ms["with_head"] - ms["backbone"],
            "loss_ms": ms["full"] - ms["with_head"],
            "share": (ms["full"] - ms["backbone"]) / ms["full"],
        }
    return result


def worker(args, extra: list[str]) -> None:
    torch.set_num_threads(args.threads)
    if args._worker == "lm_head":
        result = lm_head_share(args.config, extra, args.lm_warmup, args.lm_repeats)
    else:
        profile_steps = args.profile_steps if args._worker == "profile" else 0
        result = run_recipe(args.config, extra, args.warmup, args.steps, profile_steps)
    Path(args._result).write_text(json.dumps(result), encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Driver side: one subprocess per row, then the tables.


def _error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or ["no output"])[-1][:300]


def run_worker(script: str | os.PathLike, argv: list[str], threads: int, timeout: int) -> dict:
    """Runs benchmark `script` with `argv` plus `--_result FILE` in a fresh process on `threads` threads and returns
    the JSON it writes there, or `{"error": ...}` (timeout, non-zero exit or no result)."""
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(script).resolve()), "--_result", str(result), *argv]
        # The worker runs this checkout's recipe and library, however (or whether) the package is installed.
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        # A fresh inductor cache: torch.compile's on-disk cache would otherwise carry compiled code between runs.
        env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads)}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if run.returncode != 0 or not result.exists():
            return {"error": f"exit {run.returncode}: {_error_line(run.stderr)}"}
        return json.loads(result.read_text(encoding="utf-8"))


def spawn(mode: str, threads: int, flags: list[str], args, extra: list[str]) -> dict:
    """Runs this script as a worker in a fresh process; its result, or `{"error": ...}`."""
    argv = ["--_worker", mode, "--threads", str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    argv += ["--profile_steps", str(args.profile_steps), "--config", str(args.config)]
    argv += ["--lm_repeats", str(args.lm_repeats), "--lm_warmup", str(args.lm_warmup), "--", *extra, *flags]
    return run_worker(__file__, argv, threads, args.timeout)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The bf16 matrix instructions the CPU has, which decide whether bf16 autocast can pay off (and whether the
    recipes train a YAML's bf16 in bf16 on this CPU: `minimind_hf.training.cpu_has_native_bf16`)."""
    from minimind_hf.training import cpu_bf16_instructions

    return ",".join(cpu_bf16_instructions()) or "none"


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def format_table(rows: list[dict]) -> str:
    """The recipe runs as a fixed-width text table, one row per lever."""
    width = max([22, *(len(row["lever"]) + 2 for row in rows)])
    header = (
        f"{'lever':<{width}}{'threads':>8}{'steps':>6}{'real tok/s':>11}{'s/step':>8}{'x base':>7}{'final loss':>11}"
        f"{'warm-up s':>10}{'peak MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['lever']:<{width}}{row['threads']:>8}  {row['error']}")
            continue
        lines.append(
            f"{row['lever']:<{width}}{row['threads']:>8}{row['steps']:>6}{row['tokens_per_s']:>11.0f}"
            f"{row['s_per_step']:>8.3f}{row['ratio']:>7.2f}{row['loss']:>11.4f}{row['warmup_s']:>10.1f}"
            f"{row['peak_bytes'] / 2**20:>8.0f}"
        )
    return "\n".join(lines)


def _is_python_range(name: str) -> bool:
    """A `record_function` range opened from Python (ours `## ...`, torch's `Optimizer.step#...`,
    `enumerate(DataLoader)#...`): its self time is Python running outside any torch op. Op names never hold a `#`."""
    return name.startswith("## ") or "#" in name


def format_profile(result: dict, steps: int, baseline: dict | None) -> str:
    """Where a profiled baseline step goes: forward, backward, clipping, optimizer and the rest, each split into torch
    ops and the Python / Trainer time around them; then the top 10 entries by self time."""
    if "error" in result:
        return f"profile: {result['error']}"
    events = {}
    for event in result["profile"]:
        name = OPTIMIZER if event["name"].startswith(OPTIMIZER) else event["name"]
        merged = events.setdefault(name, {"name": name, "calls": 0, "total_us": 0.0, "self_us": 0.0})
        for key in ("calls", "total_us", "self_us"):
            merged[key] += event[key]

    def per_step(name: str, key: str) -> float:
        return events[name][key] / 1e3 / steps if name in events else 0.0

    regions = [name for name in (FORWARD, BACKWARD, CLIP, OPTIMIZER) if name in events]
    step = per_step(STEP, "total_us")  # ms per step inside the profiler's step ranges
    python = sum(per_step(name, "self_us") for name in events if _is_python_range(name))
    wall = result["s_per_step"] * 1e3
    unprofiled = baseline["s_per_step"] * 1e3 if baseline and "error" not in baseline else None
    lines = [
        f"profile: baseline, {steps} steps after {result['warmup']} warm-up, torch.profiler (CPU): {wall:.1f} ms/step"
        + (f" (unprofiled baseline: {unprofiled:.1f})" if unprofiled else ""),
        f"  {'region':<32}{'ms/step':>9}{'% step':>8}{'torch ops ms':>13}{'Python ms':>10}",
    ]
    for name in regions:
        total, own = per_step(name, "total_us"), per_step(name, "self_us")
        label = name.removeprefix("## ").replace(OPTIMIZER, "optimizer step")
        lines.append(f"  {label:<32}{total:>9.1f}{total / step:>8.1%}{total - own:>13.1f}{own:>10.1f}")
    rest = step - sum(per_step(name, "total_us") for name in regions)
    own = python - sum(per_step(name, "self_us") for name in regions)
    label = "other (data, scheduler, logs)"
    lines.append(f"  {label:<32}{rest:>9.1f}{rest / step:>8.1%}{rest - own:>13.1f}{own:>10.1f}")
    lines.append(
        f"  Python / Trainer time outside torch ops: {python:.1f} ms of {step:.1f} ms per step ({python / step:.1%})"
    )
    lines.append(f"  top 10 by self time:\n  {'name':<56}{'calls/step':>11}{'self ms/step':>13}{'% step':>8}")
    for event in sorted(events.values(), key=lambda e: -e["self_us"])[:10]:
        name = event["name"].replace(OPTIMIZER, "Optimizer.step#").removeprefix("## ")
        name = f"{name[:46]} (Python)" if _is_python_range(event["name"]) else name[:55]
        self_ms = per_step(event["name"], "self_us")
        lines.append(f"  {name:<56}{event['calls'] / steps:>11.0f}{self_ms:>13.1f}{self_ms / step:>8.1%}")
    return "\n".join(lines)


def format_lm_head(result: dict, baseline: dict | None) -> str:
    """The LM head + cross-entropy share of a forward + backward, and what the model offers against it."""
    if "error" in result:
        return f"lm_head: {result['error']}"
    batch = "x".join(map(str, result["batch"]))
    flops = result["head_params"] / (result["head_params"] + result["block_matmul_params"])
    lines = [
        f"lm_head: vocab {result['vocab_size']} x hidden {result['hidden_size']}, batch {batch}, "
        f"threads={result['threads']}; LM head = {flops:.0%} of the matmul weights a token passes (attention aside)",
        f"  {'dtype':<6}{'backbone ms':>12}{'+ LM head ms':>13}{'+ loss ms':>10}{'full ms':>9}"
        f"{'head + loss share':>18}" + ("  of a baseline step" if baseline and "error" not in baseline else ""),
    ]
    for dtype in ("fp32", "bf16"):
        r = result[dtype]
        line = (
            f"  {dtype:<6}{r['backbone_ms']:>12.1f}{r['head_ms']:>13.1f}{r['loss_ms']:>10.1f}{r['full_ms']:>9.1f}"
            f"{r['share']:>18.1%}"
        )
        if baseline and "error" not in baseline and dtype == "fp32":
            line += f"  {(r['head_ms'] + r['loss_ms']) / (baseline['s_per_step'] * 1e3):>18.1%}"
        lines.append(line)
    options = result["model_options"]
    offered = [
        "chunked loss" if options["chunked_loss"] else "no chunked loss",
        "Liger kernels" if options["liger"] else "no Liger / fused linear cross-entropy",
    ]
    if options["logits_to_keep"]:
        offered.append("`logits_to_keep` (drops positions before the head: generation only, training scores all)")
    if options["num_items_in_batch"]:
        offered.append("`num_items_in_batch` (normalises the loss across accumulation steps, no speed-up)")
    lines.append("  model offers: " + "; ".join(offered))
    return "\n".join(lines)


def winners(rows: dict[str, dict], min_gain: float, loss_tol: float) -> list[str]:
    """Levers at least `min_gain` times the baseline's tok/s whose final loss stays within `loss_tol` (relative)."""
    base = rows["baseline"]
    if "error" in base:
        return []
    return [
        name
        for name in COMBINABLE
        if name in rows
        and "error" not in rows[name]
        and rows[name]["ratio"] >= min_gain
        and abs(rows[name]["loss"] - base["loss"]) <= loss_tol * abs(base["loss"])
    ]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads of the baseline and most rows")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first (compilation lands here)")
    parser.add_argument(
        "--levers",
        nargs="+",
        default=[*LEVERS, *EXTRAS],
        choices=[*LEVERS, *EXTRAS],
        help="rows and measurements to run (baseline always runs)",
    )
    parser.add_argument("--config", default=str(CONFIG), help="the recipe's YAML")
    parser.add_argument("--profile_steps", type=int, default=5, help="steps under the profiler (after --warmup)")
    parser.add_argument("--lm_repeats", type=int, default=5, help="timed forward + backward passes per LM-head mode")
    parser.add_argument("--lm_warmup", type=int, default=2, help="untimed passes first")
    parser.add_argument("--min_gain", type=float, default=1.05, help="x base a lever needs to join the combined row")
    parser.add_argument("--loss_tol", type=float, default=0.02, help="relative final-loss gap allowed to a winner")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per row before it is reported as failed")
    parser.add_argument("--json", help="also write every result here")
    parser.add_argument("--_worker", choices=["train", "profile", "lm_head"], help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 1:
        parser.error("--steps and --profile_steps need at least 1, --warmup at least 0")
    if args._worker:
        worker(args, extra)
        return {}

    requested = ["baseline", *(name for name in LEVERS if name in args.levers and name != "baseline")]
    load_before = load_average()
    rows, notes = {}, []
    for name in requested:
        threads = 1 if name == "threads1" else args.threads
        if name == "threads1" and args.threads == 1:
            notes.append("threads1: skipped, the baseline already runs on 1 thread")
            continue
        print(f"running {name} (threads={threads}) ...", file=sys.stderr, flush=True)
        rows[name] = {"lever": name, "threads": threads, "flags": LEVERS[name]}
        rows[name].update(spawn("train", threads, LEVERS[name], args, extra))
    base = rows["baseline"]
    for row in rows.values():
        if "error" not in row and "error" not in base:
            row["ratio"] = row["tokens_per_s"] / base["tokens_per_s"]
        elif "error" not in row:
            row["ratio"] = math.nan
    won = winners(rows, args.min_gain, args.loss_tol)
    if len(won) >= 2:
        name = "+".join(won)
        flags = [flag for lever in won for flag in LEVERS[lever]]
        threads = 1 if "threads1" in won else args.threads
        print(f"running {name} (threads={threads}) ...", file=sys.stderr, flush=True)
        rows[name] = {"lever": name, "threads": threads, "flags": flags, **spawn("train", threads, flags, args, extra)}
        if "error" not in rows[name] and "error" not in base:
            rows[name]["ratio"] = rows[name]["tokens_per_s"] / base["tokens_per_s"]
    profile = lm_head = None
    if "profile" in args.levers:
        print("running profile ...", file=sys.stderr, flush=True)
        profile = spawn("profile", args.threads, [], args, extra)
    if "lm_head" in args.levers:
        print("running lm_head ...", file=sys.stderr, flush=True)
        lm_head = spawn("lm_head", args.threads, [], args, extra)

    versions = " ".join(f"{p}={importlib.metadata.version(p)}" for p in ("transformers", "trl", "accelerate"))
    print(
        f"device=cpu ({cpu_model()}, {os.cpu_count()} cores, bf16: {cpu_flags()}) threads={args.threads} "
        f"torch={torch.__version__} {versions} config={os.path.relpath(args.config, ROOT)} "
        f"steps={args.steps} warmup={args.warmup} load_avg={load_before} -> {load_average()} "
        f"recipe_args={' '.join(extra) or '-'} peak=CPU peak RSS growth during training"
    )
    print(format_table(list(rows.values())))
    if "resolved" in base:
        print("the baseline resolved to: " + " ".join(f"{key}={value}" for key, value in base["resolved"].items()))
    for row in rows.values():
        if "compiled_graphs" in row:
            notes.append(
                f"{row['lever']}: {row['compiled_graphs']} graph(s) compiled, {row['graph_breaks']} graph break(s); "
                f"slowest timed step {row['max_step_s']:.2f} s (a recompilation after the warm-up shows here)"
            )
    for note in notes:
        print(note)
    if len(won) < 2:
        print(
            f"combined: not run, winners (x base >= {args.min_gain}, loss within {args.loss_tol:.0%}): {won or 'none'}"
        )
    if profile is not None:
        print()
        print(format_profile(profile, args.profile_steps, base))
    if lm_head is not None:
        print()
        print(format_lm_head(lm_head, base))
    results = {"rows": list(rows.values()), "winners": won, "profile": profile, "lm_head": lm_head}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
