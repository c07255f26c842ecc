"""What the RL recipes share: prompts prepared for TRL's `GRPOTrainer` (and the PPO / SPO trainers built on the same
data), and the effect harness that measures a policy's rewards on held-out prompts.

Prompts come from [`minimind_hf.data.load_rl_dataset`] (`prompt` conversation, `gt`, `tools`). TRL renders
conversational prompts itself with one `chat_template_kwargs` for the whole run and the trainer's tools; a prompt that
needs its own rendering (its own thinking switch, its own tool schemas, or left truncation to `max_prompt_length`)
is rendered here with the tokenizer's chat template, and then every prompt of the dataset is, so TRL sees one
format. Reward functions accept both (`minimind_hf.rewards`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .evaluation import make_generate_fn


def _thinking(index: int, ratio: float, seed: int) -> bool:
    # One generator per (seed, row): the choice does not depend on batching or on the other rows.
    return bool(np.random.default_rng([seed, 0x7417, index]).random() < ratio)


def prepare_prompts(
    dataset,
    tokenizer,
    *,
    max_prompt_length: int | None = None,
    thinking_ratio: float | None = None,
    chat_template_kwargs: dict | None = None,
    seed: int = 0,
    render: bool = False,
    trainer_tools: bool = False,
):
    """RL prompts for TRL: conversational when TRL's own rendering suffices, else every prompt rendered to text.

    Args:
        dataset: rows with `prompt` (messages), `tools` (JSON string or None) and any reward columns (`gt`, ...).
        tokenizer: the policy's tokenizer (its chat template renders the prompts).
        max_prompt_length: keep at most this many prompt tokens, cutting from the left as upstream MiniMind does (the
            question and the generation prompt survive, the start of a long system prompt does not).
        thinking_ratio: each prompt opens a `<think>` block with this probability (upstream's `thinking_ratio`,
            seeded per row), else gets the empty closed block. A row's own `enable_thinking` column wins.
        chat_template_kwargs: the run's template kwargs (`GRPOConfig.chat_template_kwargs`), applied to every
            rendered prompt under the per-row switch.
        seed: seeds `thinking_ratio`'s draws.
        render: render every prompt to text even where TRL could (for trainers of ours that tokenize text).
        trainer_tools: the trainer runs tools itself (TRL's multi-turn tool loop, `GRPOTrainer(tools=...)`), which
            renders its own tool schemas into conversational prompts: the rows' `tools` are left to the rewards, and
            a setting that needs text prompts (per-row thinking, truncation, `render`) is refused.

    Returns:
        The dataset with `prompt` rendered to text where needed (`tools` then stays as a reward column only).
    """
    kwargs = dict(chat_template_kwargs or {})
    per_row_thinking = thinking_ratio is not None or "enable_thinking" in dataset.column_names
    has_tools = not trainer_tools and "tools" in dataset.column_names and any(t for t in dataset["tools"])

    def render_row(row: dict, index: int) -> str:
        row_kwargs = dict(kwargs)
        if row.get("enable_thinking") is not None:
            row_kwargs["enable_thinking"] = bool(row["enable_thinking"])
        elif thinking_ratio is not None:
            row_kwargs["enable_thinking"] = _thinking(index, thinking_ratio, seed)
        tools = json.loads(row["tools"]) if row.get("tools") else None
        return tokenizer.apply_chat_template(
            row["prompt"], tools=tools, add_generation_prompt=True, tokenize=False, **row_kwargs
        )

    too_long = False
    if max_prompt_length is not None and not (per_row_thinking or has_tools):
        too_long = any(
            len(tokenizer(render_row(row, i), add_special_tokens=False)["input_ids"]) > max_prompt_length
            for i, row in enumerate(dataset)
        )
    if not (render or per_row_thinking or has_tools or too_long):
        return dataset
    if trainer_tools:
        raise ValueError(
            "TRL's tool loop needs conversational prompts: drop thinking_ratio / enable_thinking rows, or raise "
            f"max_prompt_length (a prompt is longer than {max_prompt_length} tokens)"
            if not render
            else "TRL's tool loop needs conversational prompts, not rendered text"
        )

    def to_text(row: dict, index: int) -> dict:
        text = render_row(row, index)
        if max_prompt_length is not None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt_length:
                text = tokenizer.decode(ids[-max_prompt_length:])
        return {"prompt": text}

    return dataset.map(to_text, with_indices=True, desc="Rendering RL prompts")


def check_reward_data(reward_funcs: Sequence[Callable], dataset, source) -> None:
    """Every reward's needed columns (its `columns` attribute) exist and hold a value in at least one row: the RL
    reader gives every row a `gt` and a `tools` column, empty where a record has none, so a reward whose column is
    empty everywhere would score nothing for the whole run. Raises one `ValueError` naming the reward, the column and
    `source` (the data files) before training."""
    from .rewards import check_reward_columns

    check_reward_columns(reward_funcs, dataset.column_names)
    for fn in reward_funcs:
        for column in getattr(fn, "columns", ()):
            if column in dataset.column_names and not any(dataset[column]):
                raise ValueError(
                    f"reward {fn.__name__!r} needs column {column!r}, which no row of {source} fills "
                    f"({len(dataset)} rows)"
                )


def call_rewards(
    reward_funcs: Sequence[Callable], rows: Sequence[dict], completions: Sequence[str], tokenizer=None
) -> dict:
    """Each reward function's scores for `completions` of `rows`, called as TRL calls them (prompts, completions in
    the prompts' format, `completion_ids` when a tokenizer is given, and every other column as a keyword list)."""
    prompts = [row["prompt"] for row in rows]
    ids = {}
    if tokenizer is not None:
        ids["completion_ids"] = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in completions]
    shaped = [
        [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
        for prompt, text in zip(prompts, completions)
    ]
    columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"} if rows else {}
    return {
        fn.__name__: [
            float("nan") if v is None else float(v) for v in fn(prompts=prompts, completions=shaped, **ids, **columns)
        ]
        for fn in reward_funcs
    }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def reward_report(
    model,
    tokenizer,
    dataset,
    reward_funcs: Sequence[Callable],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    temperature: float = 0.8,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    chat_template_kwargs: dict | None = None,
) -> dict:
    """The effect harness: mean reward per function on `dataset`'s prompts, greedy and sampled at `temperature` once
    per seed, so a trained policy can be set against its start by more than the start's own sampling spread.

    Returns:
        `{"greedy": {name: mean}, "sampled": {name: {"mean", "min", "max", "per_seed"}}, "n": rows}`.
    """
    rows = [dict(row) for row in dataset]
    was_training = model.training
    model.eval()
    try:
        common = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "add_bos_to_text": False}
        common["chat_template_kwargs"] = chat_template_kwargs
        greedy = call_rewards(reward_funcs, rows, make_generate_fn(model, tokenizer, **common)(rows), tokenizer)
        per_seed: dict[str, list[float]] = {fn.__name__: [] for fn in reward_funcs}
        sample = make_generate_fn(model, tokenizer, sampling={"temperature": temperature, "top_p": 1.0}, **common)
        for seed in seeds:
            torch.manual_seed(seed)
            for name, scores in call_rewards(reward_funcs, rows, sample(rows), tokenizer).items():
                per_seed[name].append(_mean(scores))
    finally:
        model.train(was_training)
    return {
        "greedy": {name: _mean(scores) for name, scores in greedy.items()},
        "sampled": {
            name: {"mean": _mean(means), "min": min(means), "max": max(means), "per_seed": means}
            for name, means in per_seed.items()
        },
        "n": len(rows),
    }


def ranking_accuracy(reward: Callable, pairs) -> dict[str, float]:
    """The share of preference pairs whose chosen completion a reward scores strictly above the rejected one, per
    pair kind (`split`, when the rows have it) and over all pairs (`"all"`), with the mean margin (`"margin"`).

    `reward` is called as GRPO calls it (`prompts`, `completions`), so a reward-model folder is measured through the
    same path that trains a policy on it. `pairs`: rows with `prompt`, `chosen`, `rejected` (TRL's explicit
    preference columns, as [`minimind_hf.data.load_dpo_dataset`] gives them) and optionally `split`.
    """
    rows = [dict(row) for row in pairs]
    if not rows:
        raise ValueError("ranking_accuracy: no preference pairs")
    prompts = [row["prompt"] for row in rows]
    chosen = reward(prompts=prompts, completions=[row["chosen"] for row in rows])
    rejected = reward(prompts=prompts, completions=[row["rejected"] for row in rows])
    groups: dict[str, list[bool]] = {"all": []}
    margins = []
    for row, c, r in zip(rows, chosen, rejected):
        groups["all"].append(c > r)
        if row.get("split"):
            groups.setdefault(row["split"], []).append(c > r)
        margins.append(c - r)
    result = {name: sum(wins) / len(wins) for name, wins in groups.items()}
    result["margin"] = sum(margins) / len(margins)
    return result


__all__ = ["call_rewards", "check_reward_data", "prepare_prompts", "ranking_accuracy", "reward_report"]
