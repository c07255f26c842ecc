"""The embedded curriculum's records: a training file and a held-out evaluation file per stage ([`stage_files`];
[`minimind_hf.curriculum.cache.write_curriculum`] writes them, one folder per stage). This module builds the
knowledge stages (pretraining, SFT, DPO, RL); `skills.py` the skill stages.

Files use upstream MiniMind's JSONL formats, so the same readers serve upstream's real data. Evaluation records add
flat metadata keys that the readers ignore: `task` (which scorer applies), `split`, `lang` and `answer` (the short
expected answer). Every stage draws from its own `random.Random` seeded by (seed, stage), so the output is a pure
function of the seed and one stage's size never shifts another stage's content.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from . import templates as T
from .facts import (
    DPO_PAIRS,
    LANGS,
    MULTI_TURN_DIALOGUES,
    PASSKEY_TRAIN_FILLER,
    PASSKEY_TUNE_DOCS,
    PASSKEY_TUNE_FILLER,
    PRETRAIN_DOCS,
    PRETRAIN_HELDOUT_DOCS,
    REASONING_TRACES,
    UNKNOWN_INVENTIONS,
    UNKNOWN_PEOPLE,
    Splits,
    _arith,
    _assistant,
    _identity_answer,
    _passkey_text,
    _user,
    answer,
    arith_question,
    arith_statement,
    question,
    statement,
)
from .skills import agent_records, identity_records, passkey_eval_records, reasoning_records, tool_records
from .world import (
    ATTRIBUTES,
    INVENTION_HEADS,
    INVENTION_TAILS,
    SYLLABLES,
    Entity,
    Name,
    World,
    invention_name,
    person_name,
)

# Evaluation records name what they ask about: `kind` (person, city, country, invention, arith) and `relation` (the
# attribute, or the arithmetic operation), so a score can be broken down to where a model is weak.
ARITH_RELATIONS = {"+": "add", "×": "mul"}

STAGES = ("pretrain", "sft", "dpo", "rl", "reasoning", "lora_identity", "passkey", "tools", "agent")


def pretrain_records(
    world: World, splits: Splits, rng: random.Random, docs: dict[str, int] = PRETRAIN_DOCS
) -> Iterator[dict]:
    """Pretraining documents, `docs[kind]` of each kind in random order."""
    people = world.of_kind("person")
    inventions = world.of_kind("invention")
    find = {e.name.en: e for e in world.entities}
    kinds = [k for k, n in docs.items() for _ in range(n)]
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


def pretrain_heldout_records(
    world: World, splits: Splits, rng: random.Random, train_rng: random.Random
) -> Iterator[dict]:
    """Held-out pretraining text (bits per byte, perplexity): `PRETRAIN_HELDOUT_DOCS` documents drawn like the
    training ones from another random stream, less any that is also a training document word for word (short
    arithmetic tables and two-fact bios recur)."""
    train = {record["text"] for record in pretrain_records(world, splits, train_rng)}
    for record in pretrain_records(world, splits, rng, PRETRAIN_HELDOUT_DOCS):
        if record["text"] not in train:
            yield record


def passkey_train_records(world: World, splits: Splits, rng: random.Random) -> Iterator[dict]:
    """Passkey documents that fit the pretraining window (filler `PASSKEY_TUNE_FILLER`), mixed with replayed
    pretraining documents in the corpus's proportions, shuffled."""
    docs = []
    for _ in range(PASSKEY_TUNE_DOCS["passkey"]):
        lang, key = rng.choice(LANGS), str(rng.randint(10000, 99999))
        docs.append(_passkey_text(rng, lang, rng.randint(*PASSKEY_TUNE_FILLER), key)[1])
    total = sum(PRETRAIN_DOCS.values())
    replay = {kind: round(n * PASSKEY_TUNE_DOCS["replay"] / total) for kind, n in PRETRAIN_DOCS.items()}
    docs += [record["text"] for record in pretrain_records(world, splits, rng, replay)]
    rng.shuffle(docs)
    for text in docs:
        yield {"text": text}


def pretrain_eval_records(splits: Splits) -> Iterator[dict]:
    """Cloze prompts for the base model: a statement cut right before its value (see `templates.CLOZE_VARIANT`)."""
    groups = {"sft_taught": splits.taught, "sft_entities": splits.heldout, "pretrain_only": splits.pretrain_only}
    for split, facts in groups.items():
        for entity, attribute in facts:
            for lang in LANGS:
                full = statement(entity, attribute, lang, T.CLOZE_VARIANT[lang])
                value = entity.facts[attribute][lang]
                prefix = full[: full.rindex(value)].rstrip()
                yield {
                    "text": prefix,
                    "answer": value,
                    "task": "cloze",
                    "split": split,
                    "lang": lang,
                    "kind": entity.kind,
                    "relation": attribute,
                }
    for op, x, y in splits.arith_heldout:
        for lang in LANGS:
            full = arith_statement(op, x, y, lang)
            value = str(_arith(op, x, y))
            prefix = full[: full.rindex(value)].rstrip()
            yield {
                "text": prefix,
                "answer": value,
                "task": "cloze",
                "split": "arith",
                "lang": lang,
                "kind": "arith",
                "relation": ARITH_RELATIONS[op],
            }


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
        "kind": entity.kind,
        "relation": attribute,
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
                "kind": "arith",
                "relation": ARITH_RELATIONS[op],
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


def rl_records(world: World, splits: Splits, rng: random.Random, split: str) -> Iterator[dict]:
    """Prompt-only world-fact questions with their expected answers (`gt`), for RL on the exact-answer reward.

    Both splits ask about facts the model read in pretraining and was never asked in SFT, so the reward has room:
    SFT answers them less often than the pretrained model does on its question-answer pages.
    - `train`: the facts SFT held out of the entities it talks about (`Splits.heldout`, the `sft_entities` split
      of chat QA), in every question variant and both languages.
    - `eval`: the facts of people that no chat stage mentions (`Splits.pretrain_only`), in every question variant
      and both languages, never a training prompt: the reward rises here only if RL taught answering from
      pretraining.
    """
    records = []
    for entity, attribute in splits.heldout if split == "train" else splits.pretrain_only:
        for lang in LANGS:
            for variant in range(len(T.QUESTIONS[(entity.kind, attribute)][lang])):
                prompt, gt = question(entity, attribute, lang, variant), entity.facts[attribute][lang]
                record = {"conversations": [_user(prompt), _assistant("")], "gt": [gt], "task": "qa"}
                if split == "eval":
                    record.update({"split": "pretrain_only", "lang": lang, "kind": entity.kind, "relation": attribute})
                records.append(record)
    if split == "train":
        rng.shuffle(records)
    yield from records


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
            "heldout": pretrain_heldout_records(world, splits, rng("pretrain-heldout"), rng("pretrain")),
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
            "train": rl_records(world, splits, rng("rl"), "train"),
            "eval": rl_records(world, splits, rng("rl-eval"), "eval"),
        },
        "reasoning": {
            "train": reasoning_records(rng("reasoning"), "train", REASONING_TRACES["train"], seen_reasoning),
            "eval": reasoning_records(rng("reasoning-eval"), "eval", REASONING_TRACES["eval"], seen_reasoning),
        },
        "lora_identity": {
            "train": identity_records(rng("identity"), "train"),
            "eval": identity_records(rng("identity-eval"), "eval"),
        },
        "passkey": {
            "train": passkey_train_records(world, splits, rng("passkey")),
            "eval": passkey_eval_records(rng("passkey-eval")),
        },
        "tools": {
            "train": tool_records(world, splits, rng("tools"), "train"),
            "eval": tool_records(world, splits, rng("tools-eval"), "eval"),
        },
        "agent": {
            "train": agent_records(world, splits, rng("agent"), "train"),
            "eval": agent_records(world, splits, rng("tools-eval"), "eval"),
        },
    }
