"""Statistics of a written curriculum: its distinct training sentences (for tokenizer training) and its records and
tokens per file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..data import conversation_to_messages, dpo_record_to_columns
from .records import STAGES

_SENTENCE = re.compile(r"(?<=[.!?。！？：\n])\s*")


def iter_curriculum_text(paths: dict[str, dict[str, Path]], stages: Iterable[str] = STAGES) -> Iterator[str]:
    """The distinct sentences of the curriculum's training files (pretraining text, message contents and tool calls),
    for tokenizer training.

    Each sentence is yielded once: the curriculum repeats every fact hundreds of times, and at that frequency BPE
    would learn whole Chinese facts as single tokens ("的家乡是佩塔罗"), which makes a question's tokens unrelated to
    its answer's and blocks generalisation to held-out facts. Tool schemas are left out for the same reason.
    """
    seen: set[str] = set()
    for stage in stages:
        path = paths.get(stage, {}).get("train")
        if path is None:
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                texts = [record["text"]] if "text" in record else []
                for key in ("conversations", "chosen", "rejected"):
                    for message in record.get(key, []):
                        texts += [message.get("content") or "", message.get("tool_calls") or ""]
                for text in texts:
                    for sentence in _SENTENCE.split(text):
                        if sentence.strip() and sentence not in seen:
                            seen.add(sentence)
                            yield sentence


def count_tokens(paths: dict[str, dict[str, Path]], tokenizer) -> dict[str, dict[str, dict[str, int]]]:
    """Records and tokens per stage and file, as training sees them: pretraining text with BOS and EOS, chat
    records rendered by `tokenizer`'s chat template (preference pairs: prompt + chosen), raw-text prompts as is."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for stage, files in paths.items():
        for name, path in files.items():
            texts = []
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    record = json.loads(line)
                    if "text" in record:
                        texts.append(tokenizer.bos_token + record["text"] + tokenizer.eos_token)
                        continue
                    if "chosen" in record:
                        columns = dpo_record_to_columns(record)
                        messages, tools = columns["prompt"] + columns["chosen"], columns["tools"]
                    else:
                        messages, tools = conversation_to_messages(record["conversations"])
                    tools = json.loads(tools) if tools else None
                    texts.append(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False))
            n = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
            counts.setdefault(stage, {})[name] = {"records": len(texts), "tokens": n}
    return counts
