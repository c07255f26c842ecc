"""Writes the embedded curriculum: one folder per stage, each with a training file and a held-out evaluation file.

Files use upstream MiniMind's JSONL formats, so the same readers serve upstream's real data. Evaluation records add
flat metadata keys that the readers ignore: `task` (which scorer applies), `split`, `lang` and `answer` (the short
expected answer). Every stage draws from its own `random.Random` seeded by (seed, stage), so the output is a pure
function of the seed and one stage's size never shifts another stage's content.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..data import conversation_to_messages, dpo_record_to_columns
from . import templates as T
from .tools import make_tools, tool_schemas
from .world import (
    ATTRIBUTES,
    INVENTION_HEADS,
    INVENTION_TAILS,
    SYLLABLES,
    Entity,
    Name,
    World,
    build_world,
    invention_name,
    person_name,
)


def _source_digest() -> str:
    """A hash of the code that decides the curriculum's bytes, so an edited generator never reuses a stale cache."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in (
        here / "generator.py",
        here / "templates.py",
        here / "world.py",
        here / "tools.py",
        here.parent / "data.py",
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


# The cache folder is `<version>-<seed>`: the format generation, then the source hash.
CURRICULUM_VERSION = f"1.{_source_digest()}"
LANGS = ("en", "zh")

# Pretraining mix, in documents. Sized for roughly 2M tokens with the shipped tokenizer (see docs/data.md).
PRETRAIN_DOCS = {"bio": 14000, "faq": 2500, "story": 3000, "arith": 2500, "passkey": 400}
ADD_RANGE = range(1, 21)
MUL_RANGE = range(1, 10)
ARITH_HELDOUT_FRACTION = 0.2
MULTI_TURN_DIALOGUES = 800
DPO_PAIRS = {"train": 2000, "eval": 200}
UNKNOWN_PEOPLE, UNKNOWN_INVENTIONS = 400, 24  # DPO's never-mentioned names (`unknown_entities`)
RL_PROMPTS = {"train": 1200, "eval": 200}
REASONING_TRACES = {"train": 2000, "eval": 200}
TOOL_DIALOGUES = {"train": 1200, "eval": 100}
# Passkey documents: filler sentences per document. Training documents stay inside a 256-token window; evaluation
# documents are about 1x, 2x, 4x and 8x that window with the shipped tokenizer.
PASSKEY_TRAIN_FILLER = (8, 24)
PASSKEY_EVAL_FILLER = {
    "x1": {"en": 32, "zh": 35},
    "x2": {"en": 69, "zh": 78},
    "x4": {"en": 143, "zh": 164},
    "x8": {"en": 293, "zh": 337},
}
PASSKEY_EVAL_PER_SPLIT = 25

_SENTENCE = re.compile(r"(?<=[.!?。！？：\n])\s*")

STAGES = ("pretrain", "sft", "dpo", "rl", "reasoning", "lora_identity", "passkey", "tools")


def _dump(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def _user(content: str) -> dict:
    return {"role": "user", "content": content}


def _assistant(content: str, **extra) -> dict:
    return {"role": "assistant", "content": content, **extra}


def _values(entity: Entity, attribute: str, lang: str) -> dict[str, str]:
    value = entity.facts[attribute][lang]
    return {"s": entity.name[lang], "v": value, "a": T.article(value)}


def statement(entity: Entity, attribute: str, lang: str, variant: int = 0) -> str:
    """The `variant`-th prose statement of a fact; variant 0 is the canonical answer sentence."""
    return T.fill(T.PROSE[(entity.kind, attribute)][lang][variant], **_values(entity, attribute, lang))


def question(entity: Entity, attribute: str, lang: str, variant: int) -> str:
    """The `variant`-th question about a fact."""
    return T.fill(T.QUESTIONS[(entity.kind, attribute)][lang][variant], **_values(entity, attribute, lang))


def answer(entity: Entity, attribute: str, lang: str, variant: int) -> str:
    """The chat answer to the `variant`-th question: a prose statement that mirrors the question and ends with the
    value."""
    return statement(entity, attribute, lang, T.ANSWERS[(entity.kind, attribute)][lang][variant])


class Splits:
    """Which facts SFT teaches and which are held out.

    - `pretrain_only`: people (and their inventions) that never appear in any SFT, DPO, RL or tool record.
    - `sft_entities`: one fact per remaining entity-attribute group is held out (the attribute rotates so every
      attribute type is still taught on other entities); the entity itself appears in SFT with its other facts.
    - `sft_taught`: everything else.
    Arithmetic facts are split the same way: a fixed fraction is held out of every chat stage (`arith`).
    """

    def __init__(self, world: World, seed: int):
        rng = random.Random(f"minimind-splits-{seed}")
        self.taught: list[tuple[Entity, str]] = []
        self.heldout: list[tuple[Entity, str]] = []
        self.pretrain_only: list[tuple[Entity, str]] = []
        counters: dict[str, int] = {}
        for entity in world.entities:
            attributes = ATTRIBUTES[entity.kind]
            if entity.pretrain_only:
                self.pretrain_only += [(entity, a) for a in attributes]
                continue
            index = counters.get(entity.kind, 0)
            counters[entity.kind] = index + 1
            if len(attributes) > 1:
                held = attributes[index % len(attributes)]
            else:
                # single-attribute kinds (cities, countries): hold out every fourth entity's fact
                held = attributes[0] if index % 4 == 3 else None
            for attribute in attributes:
                (self.heldout if attribute == held else self.taught).append((entity, attribute))
        arith = [("+", x, y) for x in ADD_RANGE for y in ADD_RANGE] + [
            ("×", x, y) for x in MUL_RANGE for y in MUL_RANGE
        ]
        rng.shuffle(arith)
        cut = int(len(arith) * ARITH_HELDOUT_FRACTION)
        self.arith_heldout, self.arith_taught = sorted(arith[:cut]), sorted(arith[cut:])
        self.arith_all = sorted(arith)


def _arith(op: str, x: int, y: int) -> int:
    return x + y if op == "+" else x * y


def arith_statement(op: str, x: int, y: int, lang: str) -> str:
    table = T.ADD_PROSE if op == "+" else T.MUL_PROSE
    return table[lang].format(x=x, y=y, z=_arith(op, x, y))


def arith_question(op: str, x: int, y: int, lang: str, variant: int) -> str:
    table = T.ADD_QUESTIONS if op == "+" else T.MUL_QUESTIONS
    return table[lang][variant].format(x=x, y=y)


def _passkey_text(rng: random.Random, lang: str, filler: int, key: str) -> tuple[str, str]:
    """A passkey document cut right before the key's final mention: returns (prompt, full document)."""
    spec = T.PASSKEY[lang]
    sep = " " if lang == "en" else ""
    before = rng.randint(0, filler)
    sentences = [rng.choice(spec["filler"]) for _ in range(filler)]
    body = [spec["intro"], *sentences[:before], spec["key"].format(k=key), *sentences[before:], spec["question"]]
    prompt = sep.join(body)
    return prompt, f"{prompt} {key}." if lang == "en" else f"{prompt}{key}。"


def pretrain_records(world: World, splits: Splits, rng: random.Random) -> Iterator[dict]:
    people = world.of_kind("person")
    inventions = world.of_kind("invention")
    find = {e.name.en: e for e in world.entities}
    kinds = [k for k, n in PRETRAIN_DOCS.items() for _ in range(n)]
    rng.shuffle(kinds)
    for kind in kinds:
        lang = rng.choice(LANGS)
        sep = " " if lang == "en" else ""
        if kind == "bio":
            entity = rng.choice(world.entities)
            facts = [(entity, a) for a in ATTRIBUTES[entity.kind]]
            # related facts tie the graph together (a person's city's country, an inventor's job)
            for _, attribute in list(facts):
                value = find.get(entity.facts[attribute].en)
                if value is not None and rng.random() < 0.5:
                    extra = rng.choice(ATTRIBUTES[value.kind])
                    facts.append((value, extra))
            rng.shuffle(facts)
            sentences = [statement(e, a, lang, rng.randrange(len(T.PROSE[(e.kind, a)][lang]))) for e, a in facts]
            yield {"text": sep.join(sentences)}
        elif kind == "story":
            p1, p2 = rng.sample(people, 2)
            invention = rng.choice(inventions)
            c2 = p2.facts["city"]
            values = {
                "o": rng.choice(T.STORY_OPENINGS[lang]),
                "p1": p1.name[lang],
                "p2": p2.name[lang],
                "c1": p1.facts["city"][lang],
                "c2": c2[lang],
                "k2": find[c2.en].facts["country"][lang],
                "j1": p1.facts["job"][lang],
                "j2": p2.facts["job"][lang],
                "a1": T.article(p1.facts["job"][lang]),
                "a2": T.article(p2.facts["job"][lang]),
                "col1": p1.facts["colour"][lang],
                "col2": p2.facts["colour"][lang],
                "i": invention.name[lang],
                "ip": invention.facts["inventor"][lang],
                "iy": invention.facts["year"][lang],
            }
            yield {"text": rng.choice(T.STORIES[lang]).format(**values)}
        elif kind == "faq":
            # question-answer pages about SFT-taught facts only: pretraining learns to read a question's attribute,
            # while held-out facts stay declarative prose
            q, a = T.FAQ[lang]
            lines = []
            for entity, attribute in rng.sample(splits.taught, rng.randint(3, 5)):
                variant = rng.randrange(3)
                lines += [q + question(entity, attribute, lang, variant), a + answer(entity, attribute, lang, variant)]
            yield {"text": "\n".join(lines)}
        elif kind == "arith":
            problems = rng.sample(splits.arith_all, rng.randint(8, 16))
            lines = [rng.choice(T.ARITH_INTRO[lang])] + [arith_statement(op, x, y, lang) for op, x, y in problems]
            yield {"text": "\n".join(lines)}
        else:
            key = str(rng.randint(10000, 99999))
            yield {"text": _passkey_text(rng, lang, rng.randint(*PASSKEY_TRAIN_FILLER), key)[1]}


def pretrain_eval_records(splits: Splits) -> Iterator[dict]:
    """Cloze prompts for the base model: a statement cut right before its value (see `templates.CLOZE_VARIANT`)."""
    groups = {"sft_taught": splits.taught, "sft_entities": splits.heldout, "pretrain_only": splits.pretrain_only}
    for split, facts in groups.items():
        for entity, attribute in facts:
            for lang in LANGS:
                full = statement(entity, attribute, lang, T.CLOZE_VARIANT[lang])
                value = entity.facts[attribute][lang]
                prefix = full[: full.rindex(value)].rstrip()
                yield {"text": prefix, "answer": value, "task": "cloze", "split": split, "lang": lang}
    for op, x, y in splits.arith_heldout:
        for lang in LANGS:
            full = arith_statement(op, x, y, lang)
            value = str(_arith(op, x, y))
            prefix = full[: full.rindex(value)].rstrip()
            yield {"text": prefix, "answer": value, "task": "cloze", "split": "arith", "lang": lang}


def _identity_answer(rng: random.Random, identity: dict, kind: str, lang: str) -> str:
    template = rng.choice(T.IDENTITY_ANSWERS[kind][lang])
    return T.fill(template, name=identity["name"][lang], maker=identity["maker"][lang])


def sft_records(world: World, splits: Splits, rng: random.Random) -> Iterator[dict]:
    records = []
    for entity, attribute in splits.taught:
        for lang in LANGS:
            for variant in range(len(T.QUESTIONS[(entity.kind, attribute)][lang])):
                reply = answer(entity, attribute, lang, variant)
                records.append([_user(question(entity, attribute, lang, variant)), _assistant(reply)])
    for op, x, y in splits.arith_taught:
        for lang in LANGS:
            variant = rng.randrange(3)
            records.append(
                [_user(arith_question(op, x, y, lang, variant)), _assistant(arith_statement(op, x, y, lang))]
            )
    for _ in range(MULTI_TURN_DIALOGUES):
        lang = rng.choice(LANGS)
        turns = []
        for entity, attribute in rng.sample(splits.taught, rng.randint(2, 3)):
            variant = rng.randrange(3)
            turns += [
                _user(question(entity, attribute, lang, variant)),
                _assistant(answer(entity, attribute, lang, variant)),
            ]
        records.append(turns)
    for kind, prompts in T.IDENTITY_PROMPTS.items():
        for lang in LANGS:
            for prompt in prompts[lang]:
                records.append([_user(prompt), _assistant(_identity_answer(rng, T.BASE_IDENTITY, kind, lang))])
    for lang in LANGS:
        for prompt, reply in T.GREETINGS[lang]:
            records += [[_user(prompt), _assistant(reply)]] * 4
    rng.shuffle(records)
    for conversations in records:
        yield {"conversations": conversations}


def _qa_eval(split: str, entity: Entity, attribute: str, lang: str, rng: random.Random) -> dict:
    variant = rng.randrange(len(T.QUESTIONS[(entity.kind, attribute)][lang]))
    reply = answer(entity, attribute, lang, variant)
    conversations = [_user(question(entity, attribute, lang, variant)), _assistant(reply)]
    return {
        "conversations": conversations,
        "answer": entity.facts[attribute][lang],
        "task": "qa",
        "split": split,
        "lang": lang,
    }


def sft_eval_records(world: World, splits: Splits, rng: random.Random) -> Iterator[dict]:
    for split, facts in (("sft_entities", splits.heldout), ("pretrain_only", splits.pretrain_only)):
        for entity, attribute in facts:
            for lang in LANGS:
                yield _qa_eval(split, entity, attribute, lang, rng)
    for op, x, y in splits.arith_heldout:
        for lang in LANGS:
            conversations = [
                _user(arith_question(op, x, y, lang, rng.randrange(3))),
                _assistant(arith_statement(op, x, y, lang)),
            ]
            yield {
                "conversations": conversations,
                "answer": str(_arith(op, x, y)),
                "task": "arith",
                "split": "arith",
                "lang": lang,
            }


def _wrong_value(world: World, entity: Entity, attribute: str, lang: str, rng: random.Random) -> str:
    # wrong values come from chat-visible entities only, so no pretrain-only name leaks into chat stages
    values = {e.facts[attribute][lang] for e in world.of_kind(entity.kind) if not e.pretrain_only}
    pool = sorted(values - {entity.facts[attribute][lang]})
    if attribute in ("age", "year"):
        right = int(entity.facts[attribute][lang])
        pool = [str(right + d) for d in (-3, -2, -1, 1, 2, 3)]
    return rng.choice(pool)


def unknown_entities(world: World) -> dict[str, list[Entity]]:
    """People and inventions that exist nowhere else in the curriculum, split into DPO's train and eval halves.

    Their facts are copied from chat-visible entities of the same kind, so the invented answer that DPO's
    `unknown_entity` pairs reject reads exactly like a real one: only knowing the name tells them apart.
    """
    rng = random.Random(f"minimind-unknown-{world.seed}")
    taken = {e.name.en for e in world.entities}
    visible = {kind: [e for e in world.of_kind(kind) if not e.pretrain_only] for kind in ("person", "invention")}
    names = [invention_name(h, t) for h in INVENTION_HEADS for t in INVENTION_TAILS]
    names = [name for name in names if name.en not in taken]
    rng.shuffle(names)
    inventions = [
        Entity("invention", name, dict(rng.choice(visible["invention"]).facts)) for name in names[:UNKNOWN_INVENTIONS]
    ]
    people: list[Entity] = []
    while len(people) < UNKNOWN_PEOPLE:
        name = person_name(*([rng.choice(SYLLABLES) for _ in range(2)] for _ in range(2)))
        if name.en in taken:
            continue
        taken.add(name.en)
        people.append(Entity("person", name, dict(rng.choice(visible["person"]).facts)))
    cut_people, cut_inventions = UNKNOWN_PEOPLE // 4, UNKNOWN_INVENTIONS // 4
    return {
        "eval": people[:cut_people] + inventions[:cut_inventions],
        "train": people[cut_people:] + inventions[cut_inventions:],
    }


def dpo_records(world: World, splits: Splits, rng: random.Random, split: str, count: int) -> Iterator[dict]:
    """Preference pairs of three kinds, a third each: `wrong_fact` (the right answer over the same sentence with a
    wrong value), `evasive` (the right answer over "I don't know") and `unknown_entity` (asked about someone or
    something that exists nowhere in the curriculum, "I don't know" over a confidently invented fact). SFT never sees
    the third kind, so its policy prefers the invention: that is the preference DPO has to teach, and held-out
    pairs about other unknown names show whether it generalised.

    Known-entity prompts: train and eval draw disjoint (fact, language, question) prompts from the SFT-taught facts;
    unknown entities: disjoint sets of names (`unknown_entities`).
    """
    prompts = [(e, a, lang, v) for e, a in splits.taught for lang in LANGS for v in range(3)]
    random.Random(f"minimind-dpo-prompts-{world.seed}").shuffle(prompts)
    cut = DPO_PAIRS["eval"]
    pool = prompts[:cut] if split == "eval" else prompts[cut:]
    unknown = unknown_entities(world)[split]
    for i in range(count):
        entity, attribute, lang, variant = pool[i % len(pool)]
        draw = rng.random()
        if draw < 1 / 3:
            entity = rng.choice(unknown)
            attribute = rng.choice(ATTRIBUTES[entity.kind])
        user = _user(question(entity, attribute, lang, variant))
        reply = answer(entity, attribute, lang, variant)
        if draw < 1 / 3:
            chosen, rejected, kind = rng.choice(T.EVASIVE[lang]), reply, "unknown_entity"
        elif draw < 2 / 3:
            wrong = _wrong_value(world, entity, attribute, lang, rng)
            fake = Entity(entity.kind, entity.name, {**entity.facts, attribute: Name(wrong, wrong)})
            chosen, rejected, kind = reply, answer(fake, attribute, lang, variant), "wrong_fact"
        else:
            chosen, rejected, kind = reply, rng.choice(T.EVASIVE[lang]), "evasive"
        record = {"chosen": [user, _assistant(chosen)], "rejected": [user, _assistant(rejected)]}
        if split == "eval":
            record.update({"task": "preference", "split": kind, "lang": lang})
        yield record


def _rl_item(world: World, splits: Splits, rng: random.Random, split: str) -> dict:
    lang = rng.choice(LANGS)
    if rng.random() < 0.5:
        op, x, y = rng.choice(splits.arith_heldout if split == "eval" else splits.arith_taught)
        prompt, answer, task = arith_question(op, x, y, lang, rng.randrange(3)), str(_arith(op, x, y)), "arith"
    else:
        entity, attribute = rng.choice(splits.heldout if split == "eval" else splits.taught)
        prompt, answer, task = question(entity, attribute, lang, rng.randrange(3)), entity.facts[attribute][lang], "qa"
    record = {"conversations": [_user(prompt), _assistant("")], "gt": [answer], "task": task}
    if split == "eval":
        record.update({"split": task, "lang": lang})
    return record


def rl_records(world: World, splits: Splits, rng: random.Random, split: str, count: int) -> Iterator[dict]:
    for _ in range(count):
        yield _rl_item(world, splits, rng, split)


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


def stage_files(world: World, seed: int) -> dict[str, dict[str, Iterable[dict]]]:
    """Lazily generated records for every stage and file (`train`, `eval`)."""
    splits = Splits(world, seed)

    def rng(name: str) -> random.Random:
        return random.Random(f"minimind-curriculum-{seed}-{name}")

    seen_reasoning: set = set()
    return {
        "pretrain": {
            "train": pretrain_records(world, splits, rng("pretrain")),
            "eval": pretrain_eval_records(splits),
        },
        "sft": {
            "train": sft_records(world, splits, rng("sft")),
            "eval": sft_eval_records(world, splits, rng("sft-eval")),
        },
        "dpo": {
            "train": dpo_records(world, splits, rng("dpo"), "train", DPO_PAIRS["train"]),
            "eval": dpo_records(world, splits, rng("dpo-eval"), "eval", DPO_PAIRS["eval"]),
        },
        "rl": {
            "train": rl_records(world, splits, rng("rl"), "train", RL_PROMPTS["train"]),
            "eval": rl_records(world, splits, rng("rl-eval"), "eval", RL_PROMPTS["eval"]),
        },
        "reasoning": {
            "train": reasoning_records(rng("reasoning"), "train", REASONING_TRACES["train"], seen_reasoning),
            "eval": reasoning_records(rng("reasoning-eval"), "eval", REASONING_TRACES["eval"], seen_reasoning),
        },
        "lora_identity": {
            "train": identity_records(rng("identity"), "train"),
            "eval": identity_records(rng("identity-eval"), "eval"),
        },
        "passkey": {"eval": passkey_eval_records(rng("passkey-eval"))},
        "tools": {
            "train": tool_records(world, splits, rng("tools"), "train"),
            "eval": tool_records(world, splits, rng("tools-eval"), "eval"),
        },
    }


def write_curriculum(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Generates every stage into `out_dir` (created; existing files are replaced) and returns the paths.

    Files are written in order (train before eval, so held-out checks can see what training used), each to a temporary
    name first and renamed when complete. A `manifest.json` lists version, seed, record counts and paths.
    """
    out = Path(out_dir)
    world = build_world(seed)
    paths: dict[str, dict[str, Path]] = {}
    counts: dict[str, dict[str, int]] = {}
    for stage, files in stage_files(world, seed).items():
        (out / stage).mkdir(parents=True, exist_ok=True)
        for name, records in files.items():
            path = out / stage / f"{name}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            n = 0
            with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
                for record in records:
                    handle.write(_dump(record) + "\n")
                    n += 1
            os.replace(tmp, path)
            paths.setdefault(stage, {})[name] = path
            counts.setdefault(stage, {})[name] = n
    manifest = {
        "version": CURRICULUM_VERSION,
        "seed": seed,
        "counts": counts,
        "files": {s: {n: str(p.relative_to(out)) for n, p in f.items()} for s, f in paths.items()},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return paths


def default_cache_dir() -> Path:
    """`$MINIMIND_HF_CACHE/curriculum`, else `~/.cache/minimind_hf/curriculum`."""
    root = os.environ.get("MINIMIND_HF_CACHE")
    return Path(root) / "curriculum" if root else Path.home() / ".cache" / "minimind_hf" / "curriculum"


def ensure_curriculum(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Returns the curriculum's file paths per stage and file, generating it on first use (a few seconds).

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*):
            Parent folder; the curriculum lives in `<cache_dir>/<version>-<seed>`. Defaults to
            [`default_cache_dir`] (`$MINIMIND_HF_CACHE/curriculum` or `~/.cache/minimind_hf/curriculum`).
        seed (`int`, *optional*, defaults to 0):
            World and sampling seed.

    Returns:
        `dict[str, dict[str, Path]]`: e.g. `paths["sft"]["train"]`, `paths["sft"]["eval"]`.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{CURRICULUM_VERSION}-{seed}"
    manifest = target / "manifest.json"
    if not manifest.exists():
        root.mkdir(parents=True, exist_ok=True)
        # Generate beside the target and rename, so a crash or a concurrent caller never sees a half-written folder.
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            write_curriculum(staging, seed)
            try:
                os.rename(staging, target)
            except OSError:
                if not manifest.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    return {stage: {name: target / rel for name, rel in names.items()} for stage, names in files.items()}


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
