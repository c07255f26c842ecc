"""DPO throughput: our recipe (`recipes/dpo.py`, TRL's DPOTrainer) against an upstream-MiniMind-style DPO loop.

    python benchmarks/dpo_throughput.py --threads 2
    python benchmarks/dpo_throughput.py --threads 2 --presets tiny minimind2-small --max_length 128 --json dpo.json

The harness is `benchmarks/sft_throughput.py`'s (same flags, same fresh model of each preset saved with the shipped
tokenizer, one fresh process per row, same timing from the end of optimizer step `--warmup` to the end of the last
one, same columns); the stage differs. All rows train on the same preference pairs (the curriculum's DPO train
split as the recipe loads it, or `--data FILE.jsonl` in upstream's `{"chosen": [...], "rejected": [...]}` format),
`--batch_size` pairs per step (default: the YAML's, 16 for tiny), rows cut to `--max_length` (default: the YAML's, or
TRL's and upstream's 1024), at the YAML's `beta` (default 0.1, upstream's) and learning rate. Rows, per preset:

- recipe (ours): `recipes/dpo.py` as a user runs it (`--config`, default `recipes/tiny/dpo.yaml`), `--max_steps` =
  `--warmup` + `--steps`, checkpointing and trackers off: TRL's sigmoid DPO loss on the summed log-probabilities of
  the completion tokens, chosen and rejected of a batch in one forward, padded to the longest row of the batch, the
  reference a frozen copy of the start, the Trainer's fused AdamW. The policy's and the reference's log-probabilities
  come from TRL's fused LM head on the completion positions only (`minimind_hf.trainers.compact_fused_lm_head`).
- trl: the same with TRL's fused head as TRL leaves it, which off Triton devices projects every position (prompt and
  padding included) tile by tile; recipe / trl is what the compact head gains.
- upstream (baseline): a plain PyTorch loop as upstream MiniMind's `train_dpo.py` runs one: each pair's chosen and
  rejected conversation rendered with the chat template, truncated and right-padded to `--max_length`, the loss mask on
  the assistant spans (as its SFT's); a step feeds the chosen rows then the rejected rows as one batch (inputs
  `ids[:, :-1]`, targets `ids[:, 1:]`, no attention mask), the reference (a frozen copy of the start) under
  `no_grad`, both log-probabilities from a full-vocabulary `log_softmax`, averaged over each row's mask, loss
  `-logsigmoid(beta * ((chosen - rejected) - (chosen_ref - rejected_ref)))`, then backward, `clip_grad_norm_(1.0)`,
  AdamW (torch's default) at upstream's cosine learning rate, `zero_grad`. All batches are built before the timer.

Columns as in `benchmarks/sft_throughput.py`; real tok/s counts the loss-bearing tokens (the completion tokens of the
chosen and the rejected rows), so padding and the prompt cost time but count nothing.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # sibling scripts import as modules (benchmarks/ is not a package)
    sys.path.insert(0, str(ROOT / "benchmarks"))
import sft_throughput  # noqa: E402  (the harness: flags, fresh models, workers, table)

CONFIG = ROOT / "recipes" / "tiny" / "dpo.yaml"
DATA = "the curriculum's DPO train split"
MODES = ("recipe", "trl", "upstream")


def load_pairs(data: str | None):
    """The preference pairs as the recipe loads them (`prompt`, `chosen`, `rejected`, `tools`)."""
    from minimind_hf.data import load_dpo_dataset
    from recipes import dpo

    arguments = dpo.DPODataArguments(dataset_files=[data] if data else None)
    return load_dpo_dataset(arguments.files(arguments.curriculum_stage)[0])


def _beta(config: str) -> float:
    import yaml

    return float(yaml.safe_load(Path(config).read_text(encoding="utf-8")).get("beta", 0.1))


def run_recipe(args, mode: str = "recipe") -> dict:
    """`recipes/dpo.py` as the row `mode` runs it (`trl`: with TRL's fused LM head as TRL leaves it, the recipe's
    `compact_trainer_heads` skipped) for `warmup + steps` optimizer steps in this process; counts of the steps after
    the warm-up."""
    from recipes import dpo

    if mode == "trl":
        dpo.compact_trainer_heads = lambda trainer, temperature=1.0: None

    def count(inputs) -> tuple[int, int, int]:
        # TRL scores the completion tokens after the shift: completion_mask[:, 1:]
        real = int(inputs["completion_mask"][:, 1:].sum())
        return real, inputs["input_ids"].numel(), int(inputs["attention_mask"].sum())

    argv = ["--config", args.config, "--model_name_or_path", args._model]
    argv += ["--max_length", str(args.max_length), "--per_device_train_batch_size", str(args.batch_size)]
    argv += ["--learning_rate", str(args.learning_rate), "--seed", str(args.seed)]
    argv += ["--dataset_files", args.data] if args.data else []
    return sft_throughput.time_recipe(dpo, "DPOTrainer", argv, args, count)


def dpo_loss(ref_logps: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Upstream's DPO loss: per-token log-probabilities averaged over each row's mask; the first half of the rows are
    the chosen, the second half the rejected; `-logsigmoid(beta * (policy log-ratio - reference log-ratio))`, mean."""
    lengths = mask.sum(dim=1).clamp_min(1e-8)
    ref = (ref_logps * mask).sum(dim=1) / lengths
    policy = (logps * mask).sum(dim=1) / lengths
    half = ref.shape[0] // 2
    logits = (policy[:half] - policy[half:]) - (ref[:half] - ref[half:])
    return -torch.nn.functional.logsigmoid(beta * logits).mean()


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # upstream's logits_to_log_probs: a full-vocabulary log_softmax, then the targets' entries
    return torch.log_softmax(logits, dim=2).gather(2, targets.unsqueeze(2)).squeeze(2)


def upstream_batches(pairs, tokenizer, order: list[int], max_length: int, batch_size: int) -> list[dict]:
    """Upstream's batches: `batch_size` pairs per step in `order`, their chosen rows then their rejected rows, each
    truncated and right-padded to `max_length`, the loss mask on the assistant spans."""
    batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = {"chosen": [], "rejected": []}
        for index in order[start : start + batch_size]:
            pair = pairs[index]
            tools = json.loads(pair["tools"]) if isinstance(pair["tools"], str) else pair["tools"]
            for side in rows:
                encoded = tokenizer.apply_chat_template(
                    pair["prompt"] + pair[side], tools=tools, return_dict=True, return_assistant_tokens_mask=True
                )
                rows[side].append((encoded["input_ids"][:max_length], encoded["assistant_masks"][:max_length]))
        ids, masks, non_pad = [], [], 0
        for tokens, mask in rows["chosen"] + rows["rejected"]:
            pad = max_length - len(tokens)
            non_pad += len(tokens) - 1  # the inputs are ids[:, :-1]
            ids.append(tokens + [tokenizer.pad_token_id] * pad)
            masks.append(list(mask) + [0] * pad)
        ids, targets_mask = torch.tensor(ids), torch.tensor(masks)[:, 1:]
        batches.append(
            {
                "x": ids[:, :-1],
                "y": ids[:, 1:],
                "mask": targets_mask.float(),
                "real_tokens": int(targets_mask.sum()),
                "non_pad": non_pad,
                "pairs": order[start : start + batch_size],
            }
        )
    return batches


def run_upstream(args) -> dict:
    """Upstream's DPO loop on the same model, pairs, row length and batch size; counts of the timed steps."""
    import pretrain_throughput as memory  # its peak-memory helpers
    from transformers import AutoModelForCausalLM

    from minimind_hf.chat_templates import training_chat_template
    from minimind_hf.tokenization import load_tokenizer

    pairs = load_pairs(args.data)
    order = sft_throughput.upstream_order(len(pairs), args)
    with training_chat_template(load_tokenizer(args._model)) as tokenizer:
        batches = upstream_batches(pairs, tokenizer, order, args.max_length, args.batch_size)
    beta = _beta(args.config)
    model = AutoModelForCausalLM.from_pretrained(args._model).train()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    rss = memory._reset_cpu_peak()
    ends, losses = [time.perf_counter()], []
    for step, batch in enumerate(batches):
        lr = sft_throughput.upstream_lr(args, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            ref_logps = _token_logps(ref_model(input_ids=batch["x"], use_cache=False).logits, batch["y"])
        logps = _token_logps(model(input_ids=batch["x"], use_cache=False).logits, batch["y"])
        loss = dpo_loss(ref_logps, logps, batch["mask"], beta)  # it masks both
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
        losses.append(loss.item())
    result = sft_throughput.upstream_result(batches, "x", ends, args, memory._cpu_peak_bytes(rss), losses[-1])
    result["first_loss"] = losses[0]
    result["pairs"] = [index for b in batches[args.warmup :] for index in b["pairs"]]
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    return sft_throughput.main(argv, stage=sft_throughput.stage_of(globals()))


if __name__ == "__main__":
    main()
