"""Pretraining throughput: TRL's BFD packing against upstream's pad-every-sample-to-max_len, on the curriculum text.

    python benchmarks/pretrain_throughput.py --threads 1
    python benchmarks/pretrain_throughput.py --threads 2 --presets tiny minimind2-small --steps 5
    python benchmarks/pretrain_throughput.py --device cuda --dtype bf16 --batch_size 64 --steps 20

Documents come from the embedded curriculum's pretraining split (`ensure_curriculum()["pretrain"]["train"]`, or
`--data FILE.jsonl` with `{"text": ...}` records), tokenised with the shipped tokenizer as upstream does
(`bos + text + eos`, truncated to `--max_length`). The same documents are batched three ways in one run:

- packed (our path, what `SFTTrainer(packing=True)` feeds the model): `trl.pack_dataset(strategy="bfd")` packs of
  at most `--max_length` tokens, `--batch_size` packs per step, collated by TRL's
  `DataCollatorForLanguageModeling(padding_free=True)` into one padding-free row whose `position_ids` restart at every
  document (the model keeps documents apart through them).
- rows: the same packs and targets kept as `--batch_size` rows with restarting `position_ids` and no attention mask.
  Identical loss; attention stays within a row, which is cheaper wherever no variable-length attention kernel runs.
- padded (upstream's baseline): `--batch_size` documents per step, each padded to `--max_length`, pad labels -100,
  no attention mask (as upstream: right padding cannot change real tokens under a causal mask).

Each step is a plain forward + backward + gradient clipping + AdamW step on the model itself (no Trainer). Reported:

- real tok/s: loss-bearing targets per second, i.e. `(labels[:, 1:] != -100).sum()` (the model shifts labels, so this
  is exactly what the loss averages over: every non-pad token after the first of its document).
- pad frac: padding positions / all positions fed to the model.
- peak MB: on CUDA `torch.cuda.max_memory_allocated()` (reset before the model is built). On CPU the growth of the
  process's resident-set high-water mark (Linux `VmHWM`, reset through `/proc/self/clear_refs`) over the resident set
  just before the model is built: weights, gradients, AdamW state, activations and allocator slack. Where the
  high-water mark cannot be reset, the process-lifetime peak from `getrusage` is printed instead. glibc's allocator
  fragments as batch shapes vary, so the CPU figure grows somewhat with `--steps`: compare modes at equal steps.
- x padded: real tok/s divided by that of padded, for the same preset in the same run.
- MFU (CUDA only): `flops_per_token * real tok/s / peak`, with model FLOPs per real token
  `6 * N_active + 12 * n_layers * n_heads * head_dim * mean_context`, where N_active counts every matmul weight a
  token touches (the tied LM head once; for MoE only the routed experts it uses), `mean_context` is the mean number
  of keys a real token attends to (its position in its document + 1), and FLOPs spent on padding count as waste.
  The peak is `--peak_tflops` (default 989.4: H100 SXM dense bf16; pass your GPU's figure for other dtypes or GPUs).

CPU timings are noisy: pin `--threads`, keep the machine otherwise idle and report the load average.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch
from datasets import Dataset, disable_progress_bars
from trl import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.tokenization import load_tokenizer

MODES = ("packed", "rows", "padded")


def load_documents(tokenizer, path: str | os.PathLike, max_length: int, min_tokens: int) -> list[list[int]]:
    """Token ids of `bos + text + eos` per JSONL record, truncated to `max_length`, read until at least `min_tokens`
    tokens are collected (or the file ends)."""
    docs, total = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            text = json.loads(line)["text"]
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
            ids = [*ids, tokenizer.eos_token_id][:max_length]
            docs.append(ids)
            total += len(ids)
            if total >= min_tokens:
                break
    return docs


def _batch(model_inputs: dict[str, torch.Tensor], non_pad_positions: int) -> dict:
    labels = model_inputs["labels"]
    # The loss shifts labels by one: a target at index i is predicted from the input at i - 1.
    targets = labels[:, 1:] != -100
    position_ids = model_inputs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(labels.shape[1]).expand_as(labels)
    return {
        "inputs": model_inputs,
        "real_tokens": int(targets.sum()),
        "positions": labels.numel(),
        "non_pad_positions": non_pad_positions,
        # Keys each real token's prediction attends to (its position in its document + 1), for the attention FLOPs.
        "attended_keys": int((position_ids[:, :-1][targets] + 1).sum()),
    }


def _bfd_rows(docs: list[list[int]], max_length: int) -> list[dict]:
    packed = pack_dataset(Dataset.from_dict({"input_ids": docs}), seq_length=max_length, strategy="bfd")
    return [{"input_ids": row["input_ids"], "seq_lengths": row["seq_lengths"]} for row in packed]


def packed_batches(docs: list[list[int]], max_length: int, batch_size: int, pad_token_id: int) -> list[dict]:
    """Best-fit-decreasing packs of `docs` (TRL), `batch_size` packs per step, collated padding-free."""
    rows = _bfd_rows(docs, max_length)
    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
    batches = []
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        features = collator(rows[start : start + batch_size])
        inputs = {key: features[key] for key in ("input_ids", "position_ids", "labels")}
        batches.append(_batch(inputs, non_pad_positions=inputs["input_ids"].numel()))
    return batches


def packed_row_batches(docs: list[list[int]], max_length: int, batch_size: int, pad_token_id: int) -> list[dict]:
    """The same packs kept as `batch_size` rows, right-padded to the longest, with restarting `position_ids` and no
    attention mask (with a mask, transformers would not look for packed documents in `position_ids`).

    Attention then costs `batch_size * max_length**2` per layer instead of `(batch_size * max_length)**2` for the one
    padding-free row, which matters where no variable-length attention kernel runs (sdpa, every CPU).
    """
    rows = _bfd_rows(docs, max_length)
    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)
    batches = []
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        features = collator(rows[start : start + batch_size])
        # As the padding-free collator does: no document's first token is a target of the previous document.
        features["labels"][features["position_ids"] == 0] = -100
        inputs = {key: features[key] for key in ("input_ids", "position_ids", "labels")}
        batches.append(_batch(inputs, non_pad_positions=int(features["attention_mask"].sum())))
    return batches


def padded_batches(docs: list[list[int]], max_length: int, batch_size: int, pad_token_id: int) -> list[dict]:
    """Upstream's batches: `batch_size` documents per step, each right-padded to `max_length`."""
    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, pad_to_multiple_of=max_length)
    batches = []
    for start in range(0, len(docs) - batch_size + 1, batch_size):
        features = collator([{"input_ids": ids} for ids in docs[start : start + batch_size]])
        inputs = {"input_ids": features["input_ids"], "labels": features["labels"]}
        batches.append(_batch(inputs, non_pad_positions=int(features["attention_mask"].sum())))
    return batches


def active_parameters(model: MiniMindForCausalLM) -> int:
    """Matmul weights one token touches: all parameters (tied embedding once, as the LM head) minus the routed experts
    it skips."""
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    if not config.num_experts:
        return total
    expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
    return total - (config.num_experts - config.num_experts_per_tok) * expert * config.num_hidden_layers


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> int | None:
    """Returns memory to the OS, resets the resident-set high-water mark and returns the current resident set in
    bytes; `None` where the mark cannot be reset (not Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _proc_status_kb("VmRSS")
    return None if rss is None else rss * 1024


def _cpu_peak_bytes(baseline: int | None) -> int:
    if baseline is not None:
        return _proc_status_kb("VmHWM") * 1024 - baseline
    # ru_maxrss is in KiB on Linux and bytes on macOS; this is the peak since the process started.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def measure(
    config: MiniMindConfig,
    batches: list[dict],
    steps: int,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    lr: float = 5e-4,
    seed: int = 0,
) -> dict:
    """Times `steps` training steps (after `warmup` untimed ones) of a freshly initialised model on `batches`.

    Returns:
        `dict`: `real_tokens`, `positions`, `non_pad_positions`, `attended_keys` (summed over the timed steps),
        `seconds`, `tokens_per_s`, `pad_fraction`, `peak_bytes`, `active_params`, `loss` (last step) and `steps`.
    """
    if steps < 1:
        raise ValueError(f"steps: need at least 1 timed step, got {steps}")
    if len(batches) < warmup + steps:
        raise ValueError(f"need {warmup + steps} batches, got {len(batches)}; load more documents")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = None
    else:
        baseline = _reset_cpu_peak()
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(batch: dict) -> torch.Tensor:
        inputs = {key: value.to(device) for key, value in batch["inputs"].items()}
        with autocast:
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for batch in batches[:warmup]:
        step(batch)
    timed = batches[warmup : warmup + steps]
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for batch in timed:
        loss = step(batch)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    totals = {
        key: sum(b[key] for b in timed) for key in ("real_tokens", "positions", "non_pad_positions", "attended_keys")
    }
    peak = torch.cuda.max_memory_allocated(device) if cuda else _cpu_peak_bytes(baseline)
    return {
        **totals,
        "seconds": seconds,
        "tokens_per_s": totals["real_tokens"] / seconds,
        "pad_fraction": 1 - totals["non_pad_positions"] / totals["positions"],
        "peak_bytes": peak,
        "active_params": active_parameters(model),
        "loss": loss.item(),
        "steps": steps,
    }


def flops_per_token(config: MiniMindConfig, active_params: int, mean_context: float) -> float:
    """Training FLOPs per real token: 6 * N_active (matmuls, forward + backward) plus the attention scores and
    weighted sum, 4 * head_dim FLOPs per head per attended key forward, times 3 for forward + backward."""
    return (
        6 * active_params + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * mean_context
    )


def format_table(rows: list[dict], cuda: bool) -> str:
    """The results as a fixed-width text table, one row per (preset, mode)."""
    header = (
        f"{'preset':<17}{'params M':>9}{'mode':>8}{'steps':>6}{'real tok/step':>14}{'pad frac':>9}"
        f"{'real tok/s':>11}{'x padded':>9}{'peak MB':>9}" + (f"{'MFU %':>7}" if cuda else "")
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        speedup = f"{row['speedup']:.2f}" if row.get("speedup") else "-"
        line = (
            f"{row['preset']:<17}{row['active_params'] / 1e6:>9.2f}{row['mode']:>8}{row['steps']:>6}"
            f"{row['real_tokens'] / row['steps']:>14.0f}{row['pad_fraction']:>9.3f}{row['tokens_per_s']:>11.0f}"
            f"{speedup:>9}{row['peak_bytes'] / 2**20:>9.0f}"
        )
        if cuda:
            line += f"{row['mfu'] * 100:>7.1f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "minimind2-small"], help="names from PRESETS")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU intra-op threads)")
    parser.add_argument("--max_length", type=int, default=340, help="row length (upstream MiniMind2 pretrains at 340)")
    parser.add_argument("--batch_size", type=int, default=8, help="packed rows, or padded documents, per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per (preset, mode)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="bf16 = autocast; default bf16 on CUDA, else fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, default=989.4, help="device peak for MFU (H100 SXM dense bf16)")
    parser.add_argument("--data", help="pretraining JSONL; defaults to the curriculum's pretrain train split")
    parser.add_argument(
        "--attn_implementation",
        default="sdpa",
        help="sdpa, eager, or on CUDA a varlen kernel such as flash_attention_2",
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    torch.set_num_threads(args.threads)
    disable_progress_bars()

    if args.data is None:
        from minimind_hf.curriculum import ensure_curriculum

        args.data = ensure_curriculum()["pretrain"]["train"]
    tokenizer = load_tokenizer()
    needed = (args.warmup + args.steps) * args.batch_size
    # Enough text for `needed` full packed rows (the padded run uses only the first `needed` documents).
    docs = load_documents(tokenizer, args.data, args.max_length, min_tokens=int(1.2 * needed * args.max_length))
    builders = {"packed": packed_batches, "rows": packed_row_batches, "padded": padded_batches}
    batches = {
        mode: build(docs, args.max_length, args.batch_size, tokenizer.pad_token_id) for mode, build in builders.items()
    }

    rows = []
    for preset in args.presets:
        config = MiniMindConfig.from_preset(preset, attn_implementation=args.attn_implementation)
        results = {}
        for mode in MODES:
            result = measure(config, batches[mode], args.steps, args.warmup, args.device, dtype)
            mean_context = result["attended_keys"] / result["real_tokens"]
            flops = flops_per_token(config, result["active_params"], mean_context)
            result.update(preset=preset, mode=mode, mfu=flops * result["tokens_per_s"] / (args.peak_tflops * 1e12))
            results[mode] = result
        for mode in ("packed", "rows"):
            results[mode]["speedup"] = results[mode]["tokens_per_s"] / results["padded"]["tokens_per_s"]
        rows.extend(results[mode] for mode in MODES)

    device_name = torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine()
    memory = "cuda max_memory_allocated" if cuda else "CPU peak RSS growth"
    print(
        f"device={args.device} ({device_name}) threads={torch.get_num_threads()} dtype={dtype} "
        f"attn={args.attn_implementation} max_length={args.max_length} batch_size={args.batch_size} "
        f"steps={args.steps} warmup={args.warmup} "
        f"docs={len(docs)} mean_doc_tokens={sum(map(len, docs)) / len(docs):.1f} torch={torch.__version__} "
        f"peak={memory}" + (f" peak_tflops={args.peak_tflops}" if cuda else "")
    )
    print(format_table(rows, cuda))
    return rows


if __name__ == "__main__":
    main()
