"""Records for the skill stages: reasoning traces, the LoRA identity set, long-context passkey prompts and tool
dialogues."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from . import templates as T
from .facts import (
    AGENT_PROMPTS,
    LANGS,
    PASSKEY_EVAL_FILLER,
    PASSKEY_EVAL_PER_SPLIT,
    TOOL_DIALOGUES,
    Splits,
    _assistant,
    _identity_answer,
    _passkey_text,
    _user,
    answer,
    question,
)
from .tools import make_tools, tool_schemas
from .world import World


def reasoning_problem(rng: random.Random) -> tuple[tuple[str, int, int, str, int], int]:
    """A two-step problem `x op1 y op2 z` evaluated left to right (multiplication first where it appears first)."""
    x, y, z = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
    op1, op2 = rng.choice([("×", "+"), ("+", "+"), ("×", "-"), ("+", "-")])
    first = x * y if op1 == "×" else x + y
    result = first + z if op2 == "+" else first - z
    return (op1, x, y, op2, z), result


def reasoning_trace(problem: tuple[str, int, int, str, int], lang: str) -> tuple[str, str, int]:
    """(question, assistant content in upstream's <think>/<answer> layout, result)."""
    op1, x, y, op2, z = problem
    first = x * y if op1 == "×" else x + y
    result = first + z if op2 == "+" else first - z
    expr = f"{x} {op1} {y} {op2} {z}"
    steps = T.REASONING_STEPS[lang]
    think = "\n".join(
        [
            steps["first"].format(x=x, op=op1, y=y, z=first),
            steps["then"].format(x=first, op=op2, y=z, z=result),
            steps["done"].format(z=result),
        ]
    )
    return expr, f"<think>\n{think}\n</think>\n<answer>\n{result}\n</answer>", result


def reasoning_records(rng: random.Random, split: str, count: int, seen: set) -> Iterator[dict]:
    produced = 0
    while produced < count:
        problem, _ = reasoning_problem(rng)
        # eval problems never occur in training: the training pass records what it used in `seen`
        if split == "eval" and problem in seen:
            continue
        if split == "train":
            seen.add(problem)
        lang = rng.choice(LANGS)
        expr, content, result = reasoning_trace(problem, lang)
        prompt = rng.choice(T.REASONING_QUESTIONS[lang]).format(expr=expr)
        record = {"conversations": [_user(prompt), _assistant(content)]}
        if split == "eval":
            record.update({"answer": str(result), "task": "reasoning", "split": "reasoning", "lang": lang})
        produced += 1
        yield record


def identity_records(rng: random.Random, split: str) -> Iterator[dict]:
    """LoRA identity set: the last three prompts of each list are held out for evaluation."""
    for kind, prompts in T.IDENTITY_PROMPTS.items():
        for lang in LANGS:
            chosen = prompts[lang][-3:] if split == "eval" else prompts[lang][:-3]
            for prompt in chosen:
                repeats = 1 if split == "eval" else 4
                for _ in range(repeats):
                    reply = _identity_answer(rng, T.LORA_IDENTITY, kind, lang)
                    record = {"conversations": [_user(prompt), _assistant(reply)]}
                    if split == "eval":
                        record.update(
                            {
                                "answer": T.LORA_IDENTITY[kind][lang],
                                "forbidden": [T.BASE_IDENTITY["name"][lang], T.BASE_IDENTITY["maker"][lang]],
                                "task": "identity",
                                "split": kind,
                                "lang": lang,
                            }
                        )
                    yield record


def passkey_eval_records(rng: random.Random) -> Iterator[dict]:
    for split, filler in PASSKEY_EVAL_FILLER.items():
        for i in range(PASSKEY_EVAL_PER_SPLIT * len(LANGS)):
            lang = LANGS[i % len(LANGS)]
            key = str(rng.randint(10000, 99999))
            prompt, _ = _passkey_text(rng, lang, filler[lang], key)
            yield {"text": prompt, "answer": key, "task": "passkey", "split": split, "lang": lang}


def _tool_call(name: str, arguments: dict) -> str:
    return json.dumps([{"name": name, "arguments": arguments}], ensure_ascii=False)


def tool_dialogue(world: World, splits: Splits, rng: random.Random, schemas: str, tools: dict, split: str) -> dict:
    lang = rng.choice(LANGS)
    kind = rng.choice(["calculator", "convert_units", "lookup"])
    if kind == "calculator":
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        op = rng.choice(["+", "-", "*"])
        expr = f"{a} {op} {b}"
        arguments = {"expression": expr}
        result = tools["calculator"](expr)
        user = rng.choice(T.TOOL_QUESTIONS[kind][lang]).format(expr=expr)
        final = T.TOOL_ANSWERS[kind][lang].format(expr=expr, result=result)
        expected = result
    elif kind == "convert_units":
        from_unit, to_unit = rng.choice([("km", "m"), ("m", "cm"), ("kg", "g"), ("l", "ml"), ("C", "F"), ("m", "km")])
        value = rng.randint(1, 50)
        arguments = {"value": value, "from_unit": from_unit, "to_unit": to_unit}
        result = tools["convert_units"](value, from_unit, to_unit)
        fmt = {"value": value, "from_unit": from_unit, "to_unit": to_unit}
        user = rng.choice(T.TOOL_QUESTIONS[kind][lang]).format(**fmt)
        final = T.TOOL_ANSWERS[kind][lang].format(result=result, **fmt)
        expected = result
    else:
        entity, attribute = rng.choice(splits.heldout if split == "eval" else splits.taught)
        arguments = {"entity": entity.name[lang], "attribute": attribute}
        result = tools["lookup"](**arguments)
        variant = rng.randrange(3)
        user = question(entity, attribute, lang, variant)
        final = answer(entity, attribute, lang, variant)
        expected = result
    conversations = [
        {"role": "system", "content": T.TOOL_SYSTEM[lang], "tools": schemas},
        _user(user),
        _assistant("", tool_calls=_tool_call(kind, arguments)),
        {"role": "tool", "content": result},
        _assistant(final),
    ]
    return {"conversations": conversations, "tool": kind, "arguments": arguments, "answer": expected, "lang": lang}


def tool_records(world: World, splits: Splits, rng: random.Random, split: str) -> Iterator[dict]:
    tools = make_tools(world)
    schemas = json.dumps(tool_schemas(tools), ensure_ascii=False)
    for _ in range(TOOL_DIALOGUES[split]):
        item = tool_dialogue(world, splits, rng, schemas, tools, split)
        conversations = item["conversations"]
        if split == "train":
            yield {"conversations": conversations}
            continue
        call = {"name": item["tool"], "arguments": item["arguments"]}
        yield {
            "conversations": conversations[:3],
            "tool_call": call,
            "task": "tool_call",
            "split": "tool_call",
            "lang": item["lang"],
        }
        yield {
            "conversations": conversations,
            "answer": item["answer"],
            "task": "tool_answer",
            "split": "tool_answer",
            "lang": item["lang"],
        }


def agent_records(world: World, splits: Splits, rng: random.Random, split: str) -> Iterator[dict]:
    """Tool questions as prompt-only RL rows for agentic RL: the system prompt with the tool schemas and the user's
    question, the expected final answer in `gt` and the tool a right answer calls in `tool`.

    Drawn as the tool dialogues are (`tool_dialogue`): `train` looks up the facts SFT taught, `eval` the facts it held
    out. With the tools eval split's generator (`rng("tools-eval")`), `eval` asks exactly the questions of the tools
    eval split, which `minimind_hf.eval_tools` scores.
    """
    tools = make_tools(world)
    schemas = json.dumps(tool_schemas(tools), ensure_ascii=False)
    for _ in range(AGENT_PROMPTS[split]):
        item = tool_dialogue(world, splits, rng, schemas, tools, split)
        record = {"conversations": [*item["conversations"][:2], _assistant("")], "gt": [item["answer"]]}
        record.update({"task": "agent", "tool": item["tool"], "lang": item["lang"]})
        yield record
