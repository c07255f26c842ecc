"""Reward functions for RL (GRPO / CISPO on TRL's `GRPOTrainer`; the PPO / SPO and agentic trainers reuse them), by
name.

Every reward follows TRL's contract: `fn(prompts=..., completions=..., completion_ids=..., **kwargs) -> list[float |
None]`, one value per completion, `None` where the reward does not apply (TRL logs it as NaN and leaves it out of the
means). A completion is a string (text prompts) or a list of messages (conversational prompts; the last assistant
message is read). Every dataset column but `prompt` arrives as a keyword list ([`minimind_hf.data.load_rl_dataset`]:
`gt`, the expected answers, and `tools`, the row's tool schemas as a JSON string or `None`).

>>> from minimind_hf.rewards import get_reward_funcs
>>> exact, fmt = get_reward_funcs("exact_answer,think_format")
>>> exact(completions=["7 + 5 = 12."], gt=[["12"]])
[1.0]

[`resolve_reward`] turns a name into a reward: a key of `REWARD_FUNCS`, a key of `REWARD_FACTORIES` (built with
their documented defaults or the options given), a dotted path `package.module.function`, or a folder holding a
saved reward model ([`reward_model`]). Every resolved reward is a [`Reward`], which checks its columns and its output
on each call; [`check_reward_columns`] checks a dataset's columns before training starts.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from trl.rewards import get_repetition_penalty_reward

from .evaluation import extract_answer, final_span_match, parse_tool_calls

# What the trainer passes besides the dataset's columns: never a dataset column a recipe must provide.
TRAINER_INPUTS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)

_LAYOUT = re.compile(r"^<think>\n.*?\n</think>\n\n?<answer>\n.*?\n</answer>$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)
# Where a parsed assistant message keeps its reasoning when the thinking is not left in `content`.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _text_of(content) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content or ""


def _assistant_messages(completion: list[dict]) -> list[dict]:
    return [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]


def completion_text(completion: str | list[dict]) -> str:
    """The generated text of one completion: the string itself, or the last assistant message's `content`."""
    if isinstance(completion, str):
        return completion
    messages = _assistant_messages(completion or [])
    return _text_of(messages[-1].get("content")) if messages else ""


def assistant_turn(completion: str | list[dict], prompt: str | list[dict] | None = None) -> str:
    """The whole assistant turn as the chat template writes it, before `<|im_end|>`: a message's separate reasoning
    field (`reasoning_content`, `thinking` or `reasoning`) becomes a `<think>` block before its content, and a think
    block opened by the generation prompt (a text prompt ending in `<think>\\n`, or a `</think>` with no `<think>`
    before it) gets its opening tag back."""
    text = completion_text(completion).split("<|im_end|>")[0]
    if not isinstance(completion, str):
        messages = _assistant_messages(completion or [])
        reasoning = next((messages[-1].get(k) for k in _REASONING_KEYS if messages and messages[-1].get(k)), None)
        if isinstance(reasoning, str) and "<think>" not in text:
            return f"<think>\n{reasoning.strip()}\n</think>\n{text.lstrip()}"
    opened = isinstance(prompt, str) and prompt.endswith("<think>\n")
    if "<think>" not in text.split("</think>")[0] and (opened or "</think>" in text):
        text = "<think>\n" + text
    return text


def visible_answer(completion: str | list[dict], prompt: str | list[dict] | None = None) -> str:
    """What the user sees: the assistant turn after its last `</think>` (an unclosed think block hides everything
    after it), stripped."""
    text = assistant_turn(completion, prompt)
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    return _THINK.sub("", text).strip()


def _rows(completions: Sequence, prompts: Sequence | None) -> list[tuple]:
    return list(zip(completions, prompts if prompts is not None else [None] * len(completions)))


def exact_answer(completions: list, gt: list[list[str]], prompts: list | None = None, **kwargs) -> list[float | None]:
    """1.0 when the completion's answer matches any of the row's expected answers (`gt`), 0.0 when it matches none,
    `None` for a row without expected answers.

    The answer is the curriculum's ([`minimind_hf.evaluation.extract_answer`] on [`assistant_turn`]):
    think blocks dropped, the last `<answer>` block when there is one. It matches by the final-span rule
    ([`~minimind_hf.evaluation.final_span_match`]: normalised text equal to the answer or ending with it
    at a word boundary, so "7 + 5 = 12." matches "12" and "-12" or "2.12" do not; Chinese answers need no boundary).
    """
    rewards = []
    for (completion, prompt), answers in zip(_rows(completions, prompts), gt):
        if not answers:
            rewards.append(None)
            continue
        answer = extract_answer(assistant_turn(completion, prompt))
        rewards.append(float(any(final_span_match(answer, str(expected)) for expected in answers)))
    return rewards


exact_answer.columns = ("gt",)


def think_format(completions: list, prompts: list | None = None, **kwargs) -> list[float]:
    """The think/answer layout of [`assistant_turn`], from 0.0 to 1.0: 0.5 for exactly
    `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` (one or two newlines after `</think>`, as the chat template
    writes two; surrounding whitespace ignored), plus 0.125 for each of the four tags that occurs exactly once."""
    rewards = []
    for completion, prompt in _rows(completions, prompts):
        text = assistant_turn(completion, prompt).strip()
        value = 0.5 if _LAYOUT.match(text) else 0.0
        rewards.append(value + sum(0.125 for tag in _TAGS if text.count(tag) == 1))
    return rewards


def _schemas(tools) -> dict[str, dict]:
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    functions = [tool.get("function", tool) for tool in tools or [] if isinstance(tool, dict)]
    return {fn["name"]: fn.get("parameters") or {} for fn in functions if isinstance(fn.get("name"), str)}


def _structured_call(call) -> dict | None:
    # A `tool_calls` entry of a parsed message: {"type": "function", "function": {"name", "arguments"}}.
    call = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return {"name": call["name"], "arguments": arguments} if isinstance(arguments, dict) else None


def tool_calls(completion: str | list[dict]) -> list[dict | None]:
    """Every tool call of a completion in order: each `<tool_call>` block of its text and each `tool_calls` entry of
    its assistant messages, as `{"name", "arguments"}`, or `None` where it does not parse
    ([`~minimind_hf.evaluation.parse_tool_calls`]' rule: a JSON object with a string `name` and
    `arguments` an object or a JSON string of one) or is cut off before `</tool_call>`."""
    messages = [{"content": completion}] if isinstance(completion, str) else _assistant_messages(completion or [])
    calls = []
    for message in messages:
        text = _text_of(message.get("content")).split("<|im_end|>")[0]
        for block in _TOOL_CALL_BLOCK.findall(text):
            parsed = parse_tool_calls(block) if block.endswith("</tool_call>") else []  # a cut-off call never runs
            calls.append(parsed[0] if parsed else None)
        calls += [_structured_call(call) for call in message.get("tool_calls") or []]
    return calls


def _valid_call(call: dict | None, schemas: dict[str, dict]) -> bool:
    if call is None or call["name"] not in schemas:
        return False
    parameters = schemas[call["name"]]
    if any(name not in call["arguments"] for name in parameters.get("required", [])):
        return False
    return "properties" not in parameters or set(call["arguments"]) <= set(parameters["properties"])


def tool_call_valid(completions: list, tools: list, **kwargs) -> list[float]:
    """Whether the completion's tool calls ([`tool_calls`]) are calls the row's `tools` allow, 1.0 or 0.0.

    With tools offered: 1.0 when there is at least one call and every call parses, names one of the row's tools and
    passes exactly arguments of its schema with all its `required` ones present; 0.0 otherwise (no call included).
    With no tools offered (`None`, `""` or `[]`): 1.0 for no call, 0.0 for any call, so the reward also penalises
    calls to tools that do not exist on rows that ask for none.
    """
    rewards = []
    for completion, row_tools in zip(completions, tools):
        schemas, calls = _schemas(row_tools), tool_calls(completion)
        if not schemas:
            rewards.append(float(not calls))
        else:
            rewards.append(float(bool(calls) and all(_valid_call(call, schemas) for call in calls)))
    return rewards


tool_call_valid.columns = ("tools",)


def _length_window(
    completions: list, min_chars: int, max_chars: int, falloff_chars: int, prompts: list | None = None, **kwargs
) -> list[float]:
    rewards = []
    for completion, prompt in _rows(completions, prompts):
        n = len(visible_answer(completion, prompt))
        if n < min_chars:
            rewards.append(n / min_chars)
        else:
            rewards.append(max(0.0, 1.0 - max(0, n - max_chars) / falloff_chars))
    return rewards


def length_window(min_chars: int = 1, max_chars: int = 128, falloff_chars: int = 128) -> Callable[..., list[float]]:
    """A reward for the length of the visible answer ([`visible_answer`], counted in characters, so one Chinese
    character counts as one), from 0.0 to 1.0: 1.0 for `min_chars <= n <= max_chars`, `n / min_chars` below (0.0 for
    an empty answer), and `1 - (n - max_chars) / falloff_chars` above, down to 0.0 at `max_chars + falloff_chars`.

    Args:
        min_chars: shortest answer with full reward (0: no lower bound).
        max_chars: longest answer with full reward.
        falloff_chars: how many characters past `max_chars` the reward takes to fall to 0.0.
    """
    if not 0 <= min_chars <= max_chars or falloff_chars <= 0:
        raise ValueError(
            f"length_window: need 0 <= min_chars <= max_chars and falloff_chars > 0, got min_chars={min_chars}, "
            f"max_chars={max_chars}, falloff_chars={falloff_chars}"
        )
    reward = partial(_length_window, min_chars=min_chars, max_chars=max_chars, falloff_chars=falloff_chars)
    reward.__name__ = "length_window"
    return reward


def repetition_penalty(ngram_size: int = 3, max_penalty: float = -1.0) -> Callable[..., list[float]]:
    """TRL's [`trl.rewards.get_repetition_penalty_reward`] on the completion's token ids (`completion_ids`, which the
    trainer passes): `(1 - unique / total n-grams) * max_penalty`, in `[max_penalty, 0.0]`; 0.0 with no repeated
    n-gram and for completions shorter than `ngram_size` tokens.

    Args:
        ngram_size: tokens per n-gram.
        max_penalty: the value approached by a fully repetitive completion (not positive).
    """
    reward = get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=max_penalty)
    reward.__name__, reward.columns = "repetition_penalty", ("completion_ids",)
    return reward


class RewardModelReward:
    """A saved reward model as a reward function; see [`reward_model`]."""

    columns = ()

    def __init__(self, path: str | os.PathLike, batch_size: int = 16, max_length: int | None = None, device=None):
        # Imported here: a run without a reward model never pays for the Auto classes' import.
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        self.__name__ = Path(path).name
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path)
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {self.path}: num_labels is {self.model.config.num_labels}, need 1")
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # Right padding: the score is read at the last non-pad token. Left truncation keeps the completion's end.
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        self.batch_size, self.max_length = batch_size, max_length

    def render(self, prompt: str | list[dict], completion: str | list[dict]) -> str:
        """The text the model scores: a conversational prompt and its completion through the chat template, a text
        prompt followed by the completion's text."""
        if isinstance(prompt, str):
            return prompt + completion_text(completion)
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        texts = [self.render(p, c) for p, c in zip(prompts, completions)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                truncation=self.max_length is not None,
                max_length=self.max_length,
            ).to(self.model.device)
            with torch.no_grad():
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def reward_model(
    path: str | os.PathLike, batch_size: int = 16, max_length: int | None = None, device: str | None = None
) -> RewardModelReward:
    """A reward model saved in `path` (a `MiniMindForSequenceClassification` with `num_labels=1`, or any
    `AutoModelForSequenceClassification`, and its tokenizer) as a reward: the model's score `logits[:, 0]` of each
    prompt + completion ([`RewardModelReward.render`]), unbounded floats, in eval mode without gradients.

    Args:
        path: the folder (`config.json`, weights, tokenizer).
        batch_size: texts per forward pass.
        max_length: keep at most this many tokens per text, cut from the left; unset: no cut.
        device: where the model runs; unset: CUDA when available, else the CPU.
    """
    return RewardModelReward(path, batch_size=batch_size, max_length=max_length, device=device)


REWARD_FUNCS: dict[str, Callable[..., list]] = {
    "exact_answer": exact_answer,
    "think_format": think_format,
    "tool_call_valid": tool_call_valid,
}
REWARD_FACTORIES: dict[str, Callable[..., Callable[..., list]]] = {
    "length_window": length_window,
    "repetition_penalty": repetition_penalty,
    "reward_model": reward_model,
}


class Reward:
    """A reward function checked on every call, under its registry name (TRL logs `rewards/<__name__>/mean`).

    A call without one of `columns` (or with it `None`) raises a `ValueError` naming the reward and the column; so
    does an output that is not one value per completion, each `None` or a finite real number. Values come back as
    floats.
    """

    def __init__(self, fn: Callable, name: str | None = None, columns: Sequence[str] | None = None):
        if isinstance(fn, Reward):
            name, columns, fn = name or fn.__name__, columns if columns is not None else fn.columns, fn.fn
        self.fn, inner = fn, fn
        while isinstance(inner, partial):  # a partial's own name and columns win, else the wrapped function's
            inner = inner.func
        self.__name__ = name or getattr(fn, "__name__", None) or getattr(inner, "__name__", type(inner).__name__)
        if columns is None:
            columns = getattr(fn, "columns", None) or getattr(inner, "columns", ())
        self.columns = tuple(columns)

    def __repr__(self) -> str:
        return f"Reward({self.__name__!r}, columns={self.columns})"

    def __call__(self, **kwargs) -> list[float | None]:
        missing = [column for column in self.columns if kwargs.get(column) is None]
        if missing:
            given = sorted(key for key, value in kwargs.items() if value is not None)
            raise ValueError(f"reward {self.__name__!r} needs the column(s) {missing}; it was given {given}")
        completions = kwargs["completions"]
        values = list(self.fn(**kwargs))
        if len(values) != len(completions):
            raise ValueError(
                f"reward {self.__name__!r} returned {len(values)} values for {len(completions)} completions"
            )
        for index, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(
                    f"reward {self.__name__!r} returned {value!r} at index {index}: need a finite number, or None "
                    "where the reward does not apply"
                )
        return [None if value is None else float(value) for value in values]


def resolve_reward(name: str | Callable, **options) -> Reward:
    """One reward from a name, as a [`Reward`].

    Args:
        name: a key of `REWARD_FUNCS`; a key of `REWARD_FACTORIES`, built with `options` (its documented defaults
            where none are given); a dotted path `package.module.function` to any function with TRL's reward
            signature (its `columns` attribute, if any, declares the columns it needs); a folder with a saved reward
            model (`config.json`), built by [`reward_model`] with `options`; or a callable, wrapped as is.
        options: keyword arguments of the factory.
    """
    if callable(name):
        return Reward(name)
    if name in REWARD_FUNCS:
        if options:
            raise ValueError(f"reward {name!r} takes no options, got {sorted(options)}")
        return Reward(REWARD_FUNCS[name], name)
    factory, label = REWARD_FACTORIES.get(name), name
    if factory is None and os.path.isfile(os.path.join(name, "config.json")):
        factory, label = partial(reward_model, name), Path(name).name
    if factory is not None:
        try:
            return Reward(factory(**options), label)
        except TypeError as error:  # a misspelt or missing option
            raise ValueError(f"reward {name!r}: {error}") from None
    reason = "not a known name, a dotted path `package.module.function` or a folder with a config.json"
    if "." in name and not os.path.exists(name):
        module_path, attribute = name.rsplit(".", 1)
        try:
            fn = getattr(importlib.import_module(module_path), attribute)
        except (ImportError, AttributeError) as error:
            reason = f"cannot import it ({type(error).__name__}: {error})"
        else:
            if callable(fn):
                return Reward(fn, attribute)
            reason = f"it is not callable ({type(fn).__name__})"
    known = sorted({*REWARD_FUNCS, *REWARD_FACTORIES})
    raise ValueError(f"unknown reward {name!r}: {reason}; known rewards: {known}")


def get_reward_funcs(names: str | Sequence[str | Callable], **options: dict) -> list[Reward]:
    """Rewards by name ([`resolve_reward`]), from a list or a comma-separated string, in order.

    Args:
        names: the rewards.
        options: per-reward factory options, keyed by name, e.g. `length_window={"max_chars": 64}`.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unused = set(options) - {n for n in names if isinstance(n, str)}
    if unused:
        raise ValueError(f"options given for reward(s) {sorted(unused)} not in {list(names)}")
    return [resolve_reward(n, **(options.get(n, {}) if isinstance(n, str) else {})) for n in names]


def check_reward_columns(reward_funcs: Sequence[Callable], column_names: Sequence[str]) -> None:
    """Raises a `ValueError` naming every reward whose needed dataset columns (its `columns` attribute, less what the
    trainer passes itself: `completion_ids`, ...) are not among `column_names`. Call it before training, so a missing
    `gt` stops the run before its first step."""
    problems = []
    for fn in reward_funcs:
        missing = [c for c in getattr(fn, "columns", ()) if c not in TRAINER_INPUTS and c not in column_names]
        if missing:
            problems.append(f"reward {getattr(fn, '__name__', type(fn).__name__)!r} needs column(s) {missing}")
    if problems:
        raise ValueError(f"{'; '.join(problems)}; the dataset has {sorted(column_names)}")


__all__ = [
    "REWARD_FACTORIES",
    "REWARD_FUNCS",
    "TRAINER_INPUTS",
    "Reward",
    "RewardModelReward",
    "assistant_turn",
    "check_reward_columns",
    "completion_text",
    "exact_answer",
    "get_reward_funcs",
    "length_window",
    "repetition_penalty",
    "resolve_reward",
    "reward_model",
    "think_format",
    "tool_call_valid",
    "tool_calls",
    "visible_answer",
]
