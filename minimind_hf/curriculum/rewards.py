"""Rule rewards for RL on the curriculum, as a name -> function registry.

Every function follows TRL's reward contract: `fn(completions, **kwargs) -> list[float]`, where a completion is a
string (standard prompts) or a list of messages (conversational prompts), and dataset columns such as `gt` arrive as
keyword lists. They are pure, so GRPO/RLOO can call them on any process.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .evaluation import extract_answer, final_span_match, parse_tool_calls

_LAYOUT = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def completion_text(completion: str | list[dict]) -> str:
    """The generated text of one completion (the last message's content for conversational completions)."""
    if isinstance(completion, str):
        return completion
    return (completion[-1].get("content") or "") if completion else ""


def correctness_reward(completions: list, gt: list[list[str]], **kwargs) -> list[float]:
    """1.0 when the completion's answer (see `evaluation.extract_answer`) matches any expected answer by the
    final-span rule, else 0.0."""
    return [
        float(any(final_span_match(extract_answer(completion_text(c)), str(answer)) for answer in answers or []))
        for c, answers in zip(completions, gt)
    ]


def reasoning_format_reward(completions: list, **kwargs) -> list[float]:
    """0.5 for the exact `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` layout plus 0.125 for each of the four
    tags that occurs exactly once (at most 1.0)."""
    rewards = []
    for completion in completions:
        text = completion_text(completion).strip()
        value = 0.5 if _LAYOUT.match(text) else 0.0
        value += sum(0.125 for tag in _TAGS if text.count(tag) == 1)
        rewards.append(value)
    return rewards


def tool_call_format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the completion holds at least one parseable `<tool_call>` JSON object, else 0.0."""
    return [float(bool(parse_tool_calls(completion_text(c)))) for c in completions]


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "correctness": correctness_reward,
    "reasoning_format": reasoning_format_reward,
    "tool_call_format": tool_call_format_reward,
}


def get_reward_funcs(names: list[str] | str) -> list[Callable[..., list[float]]]:
    """Looks up reward functions by name (a list or a comma-separated string)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise KeyError(f"unknown reward function(s) {unknown}; known: {sorted(REWARD_FUNCS)}")
    return [REWARD_FUNCS[n] for n in names]
