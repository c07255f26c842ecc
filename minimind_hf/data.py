"""Readers for upstream MiniMind's JSONL formats, producing `datasets` objects in TRL's column contracts.

| reader | upstream record | columns |
|---|---|---|
| [`load_pretrain_dataset`] | `{"text"}` | `text` |
| [`load_sft_dataset`] | `{"conversations": [...]}` | `messages`, `tools` |
| [`load_reasoning_dataset`] | SFT, assistant content `<think>...</think><answer>...</answer>` | `messages`, `tools` |
| [`load_dpo_dataset`] | `{"chosen": [...], "rejected": [...]}` | `prompt`, `chosen`, `rejected`, `tools` |
| [`load_rl_dataset`] | SFT with a placeholder last assistant turn, optional `gt` | `prompt`, `gt`, `tools` |

Messages are `{"role", "content", "reasoning_content", "tool_calls"}`; `tool_calls` is a list of
`{"type": "function", "function": {"name", "arguments"}}` with `arguments` as a JSON string (a fixed Arrow type
whatever the tool), which the chat template writes out verbatim. `tools` is the JSON string of the tool schemas (or
`None`); TRL's SFT and DPO trainers decode it per example.

Every file is validated first, line by line without holding it in memory: a broken line, a missing or mistyped
field, an unknown role, an empty file or a non-UTF-8 byte raises one [`DataValidationError`] naming the file, the line
and the field, before any training starts. Records are then streamed from disk by `datasets` (`from_generator`,
cached as Arrow, or an `IterableDataset` with `streaming=True`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, IterableDataset, List, Value

ROLES = ("system", "user", "assistant", "tool")
EMPTY_THINK = "<think>\n\n</think>\n\n"
_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)

# System prompts for the random-system-prompt augmentation (upstream adds one with p 0.2).
SYSTEM_PROMPTS = (
    "You are MiniMind, a small and helpful language model.",
    "You are a helpful assistant. Answer briefly and accurately.",
    "You are a friendly assistant. Please answer the user's question.",
    "You are a knowledgeable assistant. Give short, correct answers.",
    "你是MiniMind，一个小巧而有用的语言模型。",
    "你是一个乐于助人的助手，请简洁准确地回答。",
    "你是一个友好的AI助手，请认真回答用户的问题。",
    "你是一个知识丰富的助手，请给出简短正确的回答。",
)

_MESSAGE = {
    "role": Value("string"),
    "content": Value("string"),
    "reasoning_content": Value("string"),
    "tool_calls": List({"type": Value("string"), "function": {"name": Value("string"), "arguments": Value("string")}}),
}
FEATURES = {
    "pretrain": Features({"text": Value("string")}),
    "sft": Features({"messages": List(_MESSAGE), "tools": Value("string")}),
    "dpo": Features(
        {"prompt": List(_MESSAGE), "chosen": List(_MESSAGE), "rejected": List(_MESSAGE), "tools": Value("string")}
    ),
    "rl": Features({"prompt": List(_MESSAGE), "gt": List(Value("string")), "tools": Value("string")}),
}


class DataValidationError(ValueError):
    """A data file failed validation. The message reads `<file>:<line>: <field>: <reason>`."""

    def __init__(self, path: str | os.PathLike, line: int, field: str, reason: str):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        super().__init__(f"{path}:{line}: {field}: {reason}")


class _Invalid(ValueError):
    """Raised by the record checkers; turned into a DataValidationError once the file and line are known."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


_ABSENT = object()


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _require(record: dict, key: str, kind: type, where: str = ""):
    field = f"{where}{key}"
    if key not in record:
        raise _Invalid(field, "missing")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Invalid(field, f"expected {_type_name(kind())}, got {_type_name(value)}")
    return value


def _parse_json_string(value, field: str, kind: type):
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a JSON string, got {_type_name(value)}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise _Invalid(field, f"invalid JSON ({error.msg})") from None
    except (ValueError, RecursionError) as error:  # an over-long integer literal, or nesting past the recursion limit
        raise _Invalid(field, f"invalid JSON ({error})") from None
    if not isinstance(parsed, kind):
        raise _Invalid(field, f"expected a JSON {_type_name(kind())}, got {_type_name(parsed)}")
    return parsed


def _normalize_tool_calls(value, field: str) -> list[dict]:
    calls = _parse_json_string(value, field, list)
    normalized = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise _Invalid(f"{field}[{i}]", f"expected object, got {_type_name(call)}")
        body = call.get("function", call)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise _Invalid(f"{field}[{i}].name", "missing" if name is None else "expected string")
        arguments = body.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _parse_json_string(arguments, f"{field}[{i}].arguments", dict)
        if not isinstance(arguments, dict):
            raise _Invalid(f"{field}[{i}].arguments", f"expected object, got {_type_name(arguments)}")
        normalized.append(
            {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        )
    return normalized


def _check_conversation(value, key: str) -> tuple[list[dict], str | None]:
    """Validates an upstream message list and converts it to TRL messages plus the tools JSON string."""
    if value is _ABSENT:
        raise _Invalid(key, "missing")
    if not isinstance(value, list):
        raise _Invalid(key, f"expected array, got {_type_name(value)}")
    if not value:
        raise _Invalid(key, "empty conversation")
    messages, tools = [], None
    for i, message in enumerate(value):
        where = f"{key}[{i}]."
        if not isinstance(message, dict):
            raise _Invalid(f"{key}[{i}]", f"expected object, got {_type_name(message)}")
        role = _require(message, "role", str, where)
        if role not in ROLES:
            raise _Invalid(f"{where}role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = message.get("content", "")
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise _Invalid(f"{where}content", f"expected string, got {_type_name(content)}")
        converted = {"role": role, "content": content}
        reasoning = message.get("reasoning_content")
        if reasoning is not None:
            if role != "assistant" or not isinstance(reasoning, str):
                raise _Invalid(f"{where}reasoning_content", "expected a string on an assistant turn")
            converted["reasoning_content"] = reasoning
        if message.get("tool_calls"):
            if role != "assistant":
                raise _Invalid(f"{where}tool_calls", "only assistant turns carry tool calls")
            converted["tool_calls"] = _normalize_tool_calls(message["tool_calls"], f"{where}tool_calls")
        if message.get("tools"):
            if role != "system":
                raise _Invalid(f"{where}tools", "only the system turn carries tools")
            tools = json.dumps(_parse_json_string(message["tools"], f"{where}tools", list), ensure_ascii=False)
        messages.append(converted)
    return messages, tools


def conversation_to_messages(conversations: list[dict]) -> tuple[list[dict], str | None]:
    """Converts an upstream `conversations` list to TRL messages and the tools JSON string (or `None`).

    Raises:
        `ValueError`: when the conversation is malformed (the message names the offending field).
    """
    return _check_conversation(conversations, "conversations")


def _to_pretrain(record: dict) -> dict:
    text = _require(record, "text", str)
    if not text.strip():
        raise _Invalid("text", "empty text")
    return {"text": text}


def _to_sft(record: dict) -> dict:
    messages, tools = _check_conversation(record.get("conversations", _ABSENT), "conversations")
    if not any(m["role"] == "assistant" for m in messages):
        raise _Invalid("conversations", "no assistant turn to learn from")
    return {"messages": messages, "tools": tools}


def _to_reasoning(record: dict) -> dict:
    row = _to_sft(record)
    for i, message in enumerate(row["messages"]):
        if message["role"] == "assistant" and not message.get("reasoning_content"):
            content = message["content"]
            if "<think>" not in content or "</think>" not in content:
                raise _Invalid(f"conversations[{i}].content", "expected a <think>...</think> block")
    return row


def dpo_record_to_columns(record: dict) -> dict:
    """Converts an upstream DPO record (`chosen` / `rejected` message lists sharing their prompt) to TRL's explicit
    preference columns `prompt`, `chosen`, `rejected` (each a message list) and `tools`.

    Raises:
        `ValueError`: when the record is malformed (the message names the offending field).
    """
    chosen, tools = _check_conversation(record.get("chosen", _ABSENT), "chosen")
    rejected, _ = _check_conversation(record.get("rejected", _ABSENT), "rejected")
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise _Invalid(f"{key}[{len(messages) - 1}].role", "the last turn must be the assistant's answer")
    if chosen[:-1] != rejected[:-1]:
        raise _Invalid("rejected", "chosen and rejected must share the same prompt turns")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:], "tools": tools}


def _to_rl(record: dict) -> dict:
    messages, tools = _check_conversation(record.get("conversations", _ABSENT), "conversations")
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise _Invalid("conversations", "the prompt must end with a user or tool turn")
    gt = record.get("gt", [])
    if not isinstance(gt, list):
        raise _Invalid("gt", f"expected array, got {_type_name(gt)}")
    for i, value in enumerate(gt):
        if isinstance(value, dict | list) or value is None:
            raise _Invalid(f"gt[{i}]", f"expected string or number, got {_type_name(value)}")
    return {"prompt": messages, "gt": [v if isinstance(v, str) else json.dumps(v) for v in gt], "tools": tools}


_CONVERTERS: dict[str, tuple[Callable[[dict], dict], str]] = {
    "pretrain": (_to_pretrain, "pretrain"),
    "sft": (_to_sft, "sft"),
    "reasoning": (_to_reasoning, "sft"),
    "dpo": (dpo_record_to_columns, "dpo"),
    "rl": (_to_rl, "rl"),
}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _find_surrogate(record: dict) -> str | None:
    """Field path of the first key or string in `record` holding a lone UTF-16 surrogate, or `None` (iterative: JSON
    nesting may be deep)."""
    stack = [("", record)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return field
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                sub = f"{field}.{key}" if field else key
                if _SURROGATE.search(key):
                    return sub
                stack.append((sub, item))
        elif isinstance(value, list):
            stack.extend((f"{field}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _iter_file(path: Path, kind: str) -> Iterator[tuple[int, dict]]:
    """Yields (line number, converted row) for every non-blank line, raising DataValidationError on the first bad one."""
    convert = _CONVERTERS[kind][0]
    seen = False
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataValidationError(
                    path, number, "(encoding)", f"invalid UTF-8 byte at column {error.start + 1}"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataValidationError(
                    path, number, "(json)", f"broken JSON line ({error.msg}, column {error.colno})"
                ) from None
            except (ValueError, RecursionError) as error:  # an over-long integer literal, or nesting too deep
                raise DataValidationError(path, number, "(json)", f"broken JSON line ({error})") from None
            if not isinstance(record, dict):
                raise DataValidationError(
                    path, number, "(record)", f"expected a JSON object, got {_type_name(record)}"
                )
            try:
                row = convert(record)
            except _Invalid as error:
                raise DataValidationError(path, number, error.field, error.reason) from None
            # a lone surrogate can only come from a `\uXXXX` escape (UTF-8 bytes of one fail above); Arrow cannot store it
            field = _find_surrogate(record) if "\\u" in line else None
            if field is not None:
                raise DataValidationError(path, number, field, "lone UTF-16 surrogate (not valid Unicode text)")
            seen = True
            yield number, row
    if not seen:
        raise DataValidationError(path, 1, "(file)", "empty file: no records")


def _paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise ValueError("no data files given")
    resolved = []
    for item in items:
        path = Path(item)
        if not path.is_file():
            raise DataValidationError(path, 0, "(file)", "no such file")
        resolved.append(path)
    return resolved


def validate_jsonl(paths: str | os.PathLike | Sequence[str | os.PathLike], kind: str) -> int:
    """Validates JSONL files of `kind` (`pretrain`, `sft`, `reasoning`, `dpo`, `rl`) line by line and returns the
    number of records.

    Raises:
        [`DataValidationError`]: on the first bad line, naming file, line number and field.
    """
    return sum(1 for _ in iter_rows(paths, kind))


def iter_rows(paths: str | os.PathLike | Sequence[str | os.PathLike], kind: str) -> Iterator[dict]:
    """The rows of JSONL files of `kind`, in file and line order, each validated as [`validate_jsonl`] does (a bad
    line raises [`DataValidationError`] naming file, line number and field)."""
    if kind not in _CONVERTERS:
        raise ValueError(f"unknown data kind {kind!r}; choose one of {sorted(_CONVERTERS)}")
    for path in _paths(paths):
        for _, row in _iter_file(path, kind):
            yield row


def _generate(files: list[str], kind: str, bos_token: str | None = None) -> Iterator[dict]:
    for row in iter_rows(files, kind):
        if bos_token:
            row["text"] = bos_token + row["text"]
        yield row


def _signature(paths: list[Path], kind: str, bos_token: str | None = None) -> str:
    """Cache key of a load: the files' absolute paths, sizes and modification times, the reader kind and options."""
    digest = hashlib.sha256(f"{kind}|{bos_token}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _load(
    paths, kind: str, streaming: bool, validate: bool, cache_dir: str | None, bos_token: str | None = None
) -> Dataset | IterableDataset:
    files = _paths(paths)
    if validate:
        validate_jsonl(files, kind)
    features = FEATURES[_CONVERTERS[kind][1]]
    signature = _signature(files, kind, bos_token)
    gen_kwargs = {"files": [str(f) for f in files], "kind": kind, "bos_token": bos_token}
    if streaming:
        return IterableDataset.from_generator(_generate, features=features, gen_kwargs=gen_kwargs)
    return Dataset.from_generator(
        _generate, features=features, gen_kwargs=gen_kwargs, cache_dir=cache_dir, fingerprint=signature
    )


def load_pretrain_dataset(
    paths,
    streaming: bool = False,
    validate: bool = True,
    cache_dir: str | None = None,
    bos_token: str | None = None,
):
    """Pretraining text (`{"text": ...}` lines) as a dataset with one `text` column.

    Args:
        paths (`str`, `os.PathLike` or a list of them): JSONL files, read in order.
        streaming (`bool`, *optional*, defaults to `False`): return an `IterableDataset` that reads lazily.
        validate (`bool`, *optional*, defaults to `True`): validate every line before returning.
        cache_dir (`str`, *optional*): where `datasets` writes its Arrow cache (non-streaming).
        bos_token (`str`, *optional*): prepended to every text (upstream trains on `bos + text + eos`; TRL's SFT
            trainer appends the EOS itself).
    """
    return _load(paths, "pretrain", streaming, validate, cache_dir, bos_token)


def load_sft_dataset(paths, streaming: bool = False, validate: bool = True, cache_dir: str | None = None):
    """SFT / LoRA / distillation conversations as TRL conversational language-modelling data (`messages`, `tools`)."""
    return _load(paths, "sft", streaming, validate, cache_dir)


def load_reasoning_dataset(paths, streaming: bool = False, validate: bool = True, cache_dir: str | None = None):
    """Reasoning traces (SFT format whose assistant turns hold `<think>...</think>` blocks, or `reasoning_content`)
    with the SFT columns (`messages`, `tools`)."""
    return _load(paths, "reasoning", streaming, validate, cache_dir)


def load_dpo_dataset(paths, streaming: bool = False, validate: bool = True, cache_dir: str | None = None):
    """Preference pairs as TRL's explicit-prompt conversational preference data (`prompt`, `chosen`, `rejected`,
    `tools`)."""
    return _load(paths, "dpo", streaming, validate, cache_dir)


def load_rl_dataset(paths, streaming: bool = False, validate: bool = True, cache_dir: str | None = None):
    """RL prompts (RLAIF, agent RL) as TRL prompt-only conversational data: `prompt` (the conversation without its
    placeholder assistant turn), `gt` (expected answers as strings, `[]` when absent) and `tools`. GRPO/RLOO forward
    `gt` and `tools` to reward functions as keyword arguments."""
    return _load(paths, "rl", streaming, validate, cache_dir)


def _rng(seed: int, salt: str, index: int) -> np.random.Generator:
    # One generator per (seed, augmentation, row): the result does not depend on batching, num_proc or streaming.
    return np.random.default_rng([seed, int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16), index])


def _add_system(example: dict, index: int, p: float, seed: int, prompts: Sequence[str]) -> dict:
    messages = example["messages"]
    if example.get("tools") or (messages and messages[0]["role"] == "system"):
        return example
    rng = _rng(seed, "system", index)
    if rng.random() < p:
        prompt = prompts[int(rng.integers(len(prompts)))]
        # same keys as the existing messages, so Arrow and streaming rows keep one message schema
        system = {**dict.fromkeys(messages[0]), "role": "system", "content": prompt}
        example["messages"] = [system, *messages]
    return example


def add_random_system_prompt(dataset, p: float = 0.2, seed: int = 0, prompts: Sequence[str] = SYSTEM_PROMPTS):
    """Prepends a random system prompt to conversations that have none (and no tools) with probability `p`.

    A seeded `dataset.map` over `messages`: row `i` draws from a generator seeded by (`seed`, `i`), so the result is a
    pure function of the data and the seed.
    """
    return dataset.map(_add_system, with_indices=True, fn_kwargs={"p": p, "seed": seed, "prompts": list(prompts)})


def _strip_think(example: dict, index: int, p: float, seed: int) -> dict:
    empty = [
        m
        for m in example["messages"]
        if m["role"] == "assistant"
        and (
            (m.get("reasoning_content") is not None and not m["reasoning_content"].strip())
            or (m.get("content") or "").startswith(EMPTY_THINK)
        )
    ]
    if not empty or _rng(seed, "think", index).random() >= p:
        return example
    for message in empty:
        message["reasoning_content"] = None
        if (message.get("content") or "").startswith(EMPTY_THINK):
            message["content"] = message["content"][len(EMPTY_THINK) :]
    return example


def strip_empty_think(dataset, p: float = 0.8, seed: int = 0):
    """Removes empty think blocks (an empty `reasoning_content`, or content starting with `<think>\\n\\n</think>\\n\\n`)
    from an example's assistant turns with probability `p`, so the model learns both to skip and to emit them.

    Upstream strips with p 0.95 (MiniMind2) or 0.8 (minimind-3). Seeded per row like [`add_random_system_prompt`].
    """
    return dataset.map(_strip_think, with_indices=True, fn_kwargs={"p": p, "seed": seed})


def _skip(example: dict, index: int, p: float, seed: int) -> dict:
    if _rng(seed, "skip_thinking", index).random() >= p:
        return example
    for message in example["messages"]:
        if message["role"] != "assistant":
            continue
        if message.get("reasoning_content") is not None:
            message["reasoning_content"] = ""
        elif _THINK_BLOCK.match(message.get("content") or ""):
            message["content"] = EMPTY_THINK + _THINK_BLOCK.sub("", message["content"], count=1)
    return example


def skip_thinking(dataset, p: float = 0.2, seed: int = 0):
    """Empties the think block of a trace's assistant turns with probability `p`, so that the model also learns to
    answer straight after the empty block the chat template writes with `enable_thinking=False`
    (`<think>\\n\\n</think>\\n\\n`): minimind-3's switchable thinking. Content such as
    `<think>\\nFirst, ...\\n</think>\\n<answer>\\n7\\n</answer>` becomes `<think>\\n\\n</think>\\n\\n<answer>\\n7\\n</answer>`;
    a `reasoning_content` becomes empty. A seeded `dataset.map`: row `i` draws from a generator seeded by
    (`seed`, `i`)."""
    if p <= 0:
        return dataset
    return dataset.map(_skip, with_indices=True, fn_kwargs={"p": p, "seed": seed})
