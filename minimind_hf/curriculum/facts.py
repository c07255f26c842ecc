"""The pieces every stage's records are made of: the curriculum's sizes, which facts SFT teaches and which it holds
out ([`Splits`]), and the sentences, questions and answers that state a fact or an arithmetic result."""

from __future__ import annotations

import random

from . import templates as T
from .world import ATTRIBUTES, Entity, World

LANGS = ("en", "zh")

# Pretraining mix, in documents. Sized for roughly 2M tokens with the shipped tokenizer (see docs/data.md).
PRETRAIN_DOCS = {"bio": 14000, "faq": 2500, "story": 3000, "arith": 2500, "passkey": 400}
# Held-out pretraining text (bits per byte, perplexity): 1/40 of each kind, generated from another random stream.
PRETRAIN_HELDOUT_DOCS = {kind: n // 40 for kind, n in PRETRAIN_DOCS.items()}
ADD_RANGE = range(1, 21)
MUL_RANGE = range(1, 10)
ARITH_HELDOUT_FRACTION = 0.2
MULTI_TURN_DIALOGUES = 800
DPO_PAIRS = {"train": 2000, "eval": 200}
UNKNOWN_PEOPLE, UNKNOWN_INVENTIONS = 400, 24  # DPO's never-mentioned names (`unknown_entities`)
REASONING_TRACES = {"train": 2000, "eval": 200}
TOOL_DIALOGUES = {"train": 7200, "eval": 100}
# Agentic RL prompts (tool questions with their expected answers); the eval split is the tools eval split's questions.
AGENT_PROMPTS = {"train": 600, "eval": TOOL_DIALOGUES["eval"]}
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
# Continued pretraining for passkey retrieval (`passkey/train.jsonl`, recipes/tiny/passkey.yaml): the quickstart's
# 400 passkey documents teach the tiny model no copying at all. Filler up to 28 sentences keeps every document
# (BOS and EOS included) inside one 256-token row; the replay documents keep the rest of pretraining from fading.
PASSKEY_TUNE_FILLER = (0, 28)
PASSKEY_TUNE_DOCS = {"passkey": 18000, "replay": 3000}


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

    - `pretrain_only`: people (and their inventions) that never appear in any SFT, DPO, RL or tool training record
      (the RL stage's held-out prompts ask about them).
    - `sft_entities`: one fact per remaining entity-attribute group is held out (the attribute rotates so every
      attribute type is still taught on other entities); the entity itself appears in SFT with its other facts. The
      RL stage trains on these facts, so chat QA on them measures the model before RL.
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


def _identity_answer(rng: random.Random, identity: dict, kind: str, lang: str) -> str:
    template = rng.choice(T.IDENTITY_ANSWERS[kind][lang])
    return T.fill(template, name=identity["name"][lang], maker=identity["maker"][lang])
