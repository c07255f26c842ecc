"""The embedded curriculum: determinism, split integrity, readers on every file, scorers and tools."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minimind_hf.chat_templates import use_training_chat_template
from minimind_hf.curriculum import (
    CURRICULUM_VERSION,
    STAGES,
    build_world,
    calculator,
    convert_units,
    ensure_curriculum,
    execute_tool_call,
    make_tools,
    tool_schemas,
    write_curriculum,
)
from minimind_hf.curriculum.__main__ import main as cli_main
from minimind_hf.curriculum.facts import Splits, question
from minimind_hf.curriculum.records import unknown_entities
from minimind_hf.curriculum.templates import EVASIVE, QUESTIONS
from minimind_hf.data import dpo_record_to_columns, validate_jsonl
from minimind_hf.evaluation import (
    breakdown,
    evaluate,
    evaluate_with_breakdown,
    faq_probe_records,
    final_span_match,
    load_eval_records,
    make_generate_fn,
    normalize,
    preference_accuracy,
    preference_margins,
    score,
)
from minimind_hf.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def curriculum(tmp_path_factory):
    return write_curriculum(tmp_path_factory.mktemp("curriculum"), seed=0)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_same_bytes_other_seed_other_bytes(curriculum, tmp_path):
    again = write_curriculum(tmp_path / "again", seed=0)
    other = write_curriculum(tmp_path / "other", seed=1)
    for stage, files in curriculum.items():
        for name, path in files.items():
            assert path.read_bytes() == again[stage][name].read_bytes(), (stage, name)
    assert curriculum["sft"]["train"].read_bytes() != other["sft"]["train"].read_bytes()
    assert build_world(0).entities[0].name != build_world(1).entities[0].name


def test_every_stage_has_train_and_eval(curriculum):
    assert set(curriculum) == set(STAGES)
    for stage, files in curriculum.items():
        assert "eval" in files, stage
        assert stage == "passkey" or "train" in files, stage
    total = sum(p.stat().st_size for files in curriculum.values() for p in files.values())
    assert total < 32 * 2**20  # the 7,200 tool dialogues carry the tool schemas each: about 13 MiB


@pytest.mark.parametrize(
    ("stage", "kind"),
    [("pretrain", "pretrain"), ("sft", "sft"), ("dpo", "dpo"), ("rl", "rl"), ("reasoning", "reasoning"),
     ("lora_identity", "sft"), ("tools", "sft"), ("agent", "rl")],
)  # fmt: skip
def test_readers_accept_the_curriculum(curriculum, stage, kind):
    assert validate_jsonl(curriculum[stage]["train"], kind) > 0
    if stage != "pretrain":
        assert validate_jsonl(curriculum[stage]["eval"], kind) > 0


def test_agent_prompts_ask_the_tool_questions_with_their_answers(curriculum):
    rows = [json.loads(line) for line in curriculum["agent"]["eval"].read_text().splitlines()]
    tool_eval = [json.loads(line) for line in curriculum["tools"]["eval"].read_text().splitlines()]
    answers = [r for r in tool_eval if r["task"] == "tool_answer"]
    # the agent eval split asks exactly the tools eval split's questions (what minimind_hf.eval_tools scores)
    assert [r["conversations"][:2] for r in rows] == [r["conversations"][:2] for r in answers]
    assert [r["gt"] for r in rows] == [[r["answer"]] for r in answers]
    train = [json.loads(line) for line in curriculum["agent"]["train"].read_text().splitlines()]
    assert len(train) == 600 and {r["tool"] for r in train} == {"calculator", "convert_units", "lookup"}
    assert all(r["conversations"][-1] == {"role": "assistant", "content": ""} and r["gt"] for r in train)


def test_world_names_unique_in_both_languages():
    world = build_world(0)
    for lang in ("en", "zh"):
        names = [e.name[lang] for e in world.entities]
        assert len(set(names)) == len(names)
    for entity in world.entities:
        assert world.find(entity.name.en.upper()) is entity and world.find(entity.name.zh) is entity


def _chat_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_pretrain_only_entities_never_reach_chat_stages(curriculum):
    world = build_world(0)
    hidden = [e for e in world.entities if e.pretrain_only]
    assert len([e for e in hidden if e.kind == "person"]) == 16
    chat = "".join(_chat_text(curriculum[s]["train"]) for s in ("sft", "dpo", "rl", "tools", "agent", "lora_identity"))
    pretrain = _chat_text(curriculum["pretrain"]["train"])
    for entity in hidden:
        for lang in ("en", "zh"):
            name = json.dumps(entity.name[lang], ensure_ascii=False)[1:-1]
            assert name not in chat, entity.name
            assert name in pretrain


def test_unknown_entities_appear_only_in_their_dpo_split(curriculum):
    """DPO's honesty pairs ask about names that exist nowhere else, with disjoint names for train and eval."""
    world = build_world(0)
    unknown = unknown_entities(world)
    train_names = {e.name.en for e in unknown["train"]}
    assert train_names.isdisjoint(e.name.en for e in unknown["eval"])
    assert train_names.isdisjoint(e.name.en for e in world.entities)
    elsewhere = "".join(
        _chat_text(path) for stage, files in curriculum.items() if stage != "dpo" for path in files.values()
    )
    dpo = {kind: read(curriculum["dpo"][kind]) for kind in ("train", "eval")}
    for split, entities in unknown.items():
        other = json.dumps(dpo["eval" if split == "train" else "train"], ensure_ascii=False)
        for entity in entities:
            for lang in ("en", "zh"):
                name = json.dumps(entity.name[lang], ensure_ascii=False)[1:-1]
                assert name not in elsewhere and name not in other, entity.name
    pairs = [r for r in dpo["eval"] if r["split"] == "unknown_entity"]
    assert len(pairs) >= 40
    evasive = {*EVASIVE["en"], *EVASIVE["zh"]}
    for record in pairs:
        assert record["chosen"][1]["content"] in evasive
        assert record["rejected"][1]["content"] not in evasive


def test_heldout_splits_are_well_formed(curriculum):
    world = build_world(0)
    splits = Splits(world, 0)
    sft_train = read(curriculum["sft"]["train"])
    questions = {m["content"] for r in sft_train for m in r["conversations"] if m["role"] == "user"}
    answers = {m["content"] for r in sft_train for m in r["conversations"] if m["role"] == "assistant"}
    pretrain = _chat_text(curriculum["pretrain"]["train"])
    records = read(curriculum["sft"]["eval"])
    assert {r["split"] for r in records} == {"sft_entities", "pretrain_only", "arith"}
    for record in records:
        expected = record["conversations"][1]["content"]
        assert record["conversations"][0]["content"] not in questions
        assert expected not in answers
        # every held-out fact is stated, word for word, in the pretraining prose, but never asked there
        assert json.dumps(expected, ensure_ascii=False)[1:-1] in pretrain
        if record["task"] == "qa":
            assert json.dumps(record["conversations"][0]["content"], ensure_ascii=False)[1:-1] not in pretrain
    taught_attributes = {(e.kind, a) for e, a in splits.taught}
    chat = _chat_text(curriculum["sft"]["train"])
    for entity, attribute in splits.heldout:
        assert (entity.kind, attribute) in taught_attributes
        if entity.kind in ("person", "invention"):
            assert json.dumps(entity.name.en)[1:-1] in chat


def test_rl_trains_on_sft_heldout_facts_and_evaluates_on_pretrain_only_people(curriculum):
    """RL's training prompts ask every `sft_entities` fact, its held-out prompts every `pretrain_only` fact, each in
    every question variant and both languages, so no held-out prompt or person is trained on."""
    splits = Splits(build_world(0), 0)

    def asked(facts):
        return {
            (question(entity, attribute, lang, variant), entity.facts[attribute][lang])
            for entity, attribute in facts
            for lang in ("en", "zh")
            for variant in range(len(QUESTIONS[(entity.kind, attribute)][lang]))
        }

    def pairs(stage_file):
        return [(r["conversations"][0]["content"], r["gt"][0]) for r in read(stage_file)]

    train, held = pairs(curriculum["rl"]["train"]), pairs(curriculum["rl"]["eval"])
    assert sorted(train) == sorted(asked(splits.heldout))
    assert sorted(held) == sorted(asked(splits.pretrain_only))
    assert {r["split"] for r in read(curriculum["rl"]["eval"])} == {"pretrain_only"}


def test_scorers_perfect_one_wrong_zero(curriculum):
    for stage in ("sft", "rl", "reasoning", "lora_identity", "tools", "pretrain", "passkey"):
        records = load_eval_records(curriculum[stage]["eval"])
        raw = read(curriculum[stage]["eval"])
        by_task: dict = {}
        for record in records:
            by_task.setdefault((record["task"], record["lang"]), []).append(record)
        for record, original in zip(records, raw):
            perfect = perfect_completion(record, original)
            assert score(record, perfect) == 1.0, (stage, record, perfect)
            if record["task"] == "identity":
                # the pre-LoRA identity, or the new name said next to the old one
                wrongs = [f"I am {record['forbidden'][0]}.", f"{perfect} {record['forbidden'][0]}"]
            else:
                wrongs = [
                    next(
                        perfect_completion(other, raw[records.index(other)])
                        for other in by_task[(record["task"], record["lang"])]
                        if expected_of(other) != expected_of(record)
                    )
                ]
            for wrong in wrongs:
                assert score(record, wrong) == 0.0, (stage, record, wrong)


def expected_of(record: dict):
    return json.dumps(record.get("tool_call") or record.get("gt") or record.get("answer"), sort_keys=True)


def perfect_completion(record: dict, original: dict) -> str:
    if isinstance(record["prompt"], str):
        return f" {record['answer']}. More text follows."
    if record["task"] == "tool_call":
        return "<tool_call>\n" + json.dumps(record["tool_call"], ensure_ascii=False) + "\n</tool_call>"
    final = original["conversations"][-1]["content"]
    return final or record["gt"][0]


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("Gari Sena lives in Petaro.", "Petaro", 1),
        ("petaro", "Petaro", 1),
        ("  PETARO！ ", "Petaro", 1),
        ("Gari Sena lives in Derili.", "Petaro", 0),
        ("Gari Sena lives in Petaro. Or Derili.", "Petaro", 0),
        ("Gari Sena lives in XPetaro.", "Petaro", 0),
        ("加里·塞娜住在佩塔罗。", "佩塔罗", 1),
        ("12 - 19 = -7.", "-7", 1),
        ("12 - 19 = -7.", "7", 0),
        ("The age is 42.", "2", 0),
        ("x = 12.5", "5", 0),
        ("<think>\nthe answer is 4\n</think>\n\nIt is 5.", "5", 1),
        ("", "5", 0),
    ],
)
def test_final_span_rule(completion, answer, expected):
    from minimind_hf.evaluation import extract_answer

    assert final_span_match(extract_answer(completion), answer) == bool(expected)


def test_normalize():
    assert normalize("  Hello,  WORLD!! ") == "hello, world"
    assert normalize("（佩塔罗）。") == "佩塔罗"


def test_evaluate_with_stand_in_generate(curriculum):
    records = load_eval_records(curriculum["sft"]["eval"])
    raw = read(curriculum["sft"]["eval"])
    perfect = {id(r): o["conversations"][-1]["content"] for r, o in zip(records, raw)}
    result = evaluate(records, lambda batch: [perfect[id(r)] for r in batch])
    assert result == {"all": 1.0, "arith": 1.0, "pretrain_only": 1.0, "sft_entities": 1.0}
    assert evaluate(records, lambda batch: ["I don't know."] * len(batch))["all"] == 0.0
    with pytest.raises(ValueError, match="completions"):
        evaluate(records, lambda batch: [])


def test_breakdown_names_the_weak_kind_and_relation(curriculum):
    """Every held-out question names its entity kind and relation, and the breakdown counts and averages them: a model
    that gets exactly the people's cities wrong shows 0% there, 100% elsewhere, with the right number of questions."""
    world, splits = build_world(0), Splits(build_world(0), 0)
    for stage in ("sft", "pretrain"):
        records = load_eval_records(curriculum[stage]["eval"])
        raw = read(curriculum[stage]["eval"])
        perfect = [o["conversations"][-1]["content"] if "conversations" in o else o["answer"] for o in raw]
        wrong_cities = [
            "Nowhere." if (r["kind"], r["relation"]) == ("person", "city") else p for r, p in zip(records, perfect)
        ]
        means, groups = evaluate_with_breakdown(records, lambda batch, answers=wrong_cities: answers[: len(batch)])
        pretrain_only = groups["pretrain_only"]
        people = [e for e in world.of_kind("person") if e.pretrain_only]
        assert pretrain_only["person.city"] == {"mean": 0.0, "n": 2 * len(people)}
        assert pretrain_only["person.job"] == {"mean": 1.0, "n": 2 * len(people)}
        assert pretrain_only["person"]["mean"] == pytest.approx(0.75)
        assert pretrain_only["lang.en"]["n"] == pretrain_only["lang.zh"]["n"] == len(splits.pretrain_only)
        held = [(e.kind, a) for e, a in splits.heldout]
        for kind, attribute in set(held):
            assert groups["sft_entities"][f"{kind}.{attribute}"]["n"] == 2 * held.count((kind, attribute))
        assert set(groups["arith"]) == {"arith", "arith.add", "arith.mul", "lang.en", "lang.zh"}
        assert groups["arith"]["arith"]["mean"] == 1.0
        wrong = sum(1 - v for v in means.values())
        assert wrong > 0 and means == evaluate(records, lambda batch, answers=wrong_cities: answers[: len(batch)])
    assert breakdown([{"split": "x"}, {"split": "x", "kind": "k"}], [1.0, 0.0]) == {"x": {"k": {"mean": 0.0, "n": 1}}}


def test_faq_probe_asks_the_chat_questions_as_the_pretraining_pages_do(curriculum):
    """The probe turns every single-question chat QA record into the pretraining corpus's own Q/A page prefix (the
    page's first question line and its answer marker, read back from the pretraining file), and scores only the
    continuation's first line."""
    records = load_eval_records(curriculum["sft"]["eval"])
    probes = faq_probe_records(records)
    assert len(probes) == sum(r["task"] == "qa" for r in records) > 0
    assert {p["task"] for p in probes} == {"faq"} and {p["split"] for p in probes} == {"sft_entities", "pretrain_only"}
    pages = {}
    for doc in read(curriculum["pretrain"]["train"]):
        first, *rest = doc["text"].split("\n")
        if rest and first.startswith(("Q: ", "问：")):
            pages.setdefault("en" if first.startswith("Q") else "zh", (first, rest[0]))
    assert set(pages) == {"en", "zh"}
    for lang, (question_line, answer_line) in pages.items():
        question = question_line.split("：" if lang == "zh" else ": ", 1)[1]
        (probe,) = faq_probe_records([{"task": "qa", "lang": lang, "prompt": [{"role": "user", "content": question}]}])
        page = f"{question_line}\n{answer_line}"
        # the page goes on from exactly where the probe stops, into the answer itself
        assert page.startswith(probe["prompt"]) and page[len(probe["prompt"]) :].strip()[0] not in ":：", page
    en = next(p for p in probes if p["lang"] == "en")
    assert en["prompt"] == f"Q: {next(r for r in records if r['lang'] == 'en')['prompt'][0]['content']}\nA:"
    answer = en["answer"]
    assert score(en, f" It is {answer}.\nQ: What else?") == 1.0
    assert score(en, f" I do not know.\nA: {answer}.") == 0.0
    assert faq_probe_records([{"task": "arith", "lang": "en", "prompt": [{"role": "user", "content": "1+1?"}]}]) == []


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=6400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_make_generate_fn_runs_chat_and_raw_prompts(curriculum, tiny_llama):
    tokenizer = load_tokenizer()
    records = load_eval_records(curriculum["sft"]["eval"])[:3] + load_eval_records(curriculum["pretrain"]["eval"])[:2]
    records += load_eval_records(curriculum["tools"]["eval"])[:1]
    generate = make_generate_fn(tiny_llama, tokenizer, max_new_tokens=4, batch_size=2)
    completions = generate(records)
    assert len(completions) == len(records) and all(isinstance(c, str) for c in completions)
    assert tokenizer.padding_side == "right"
    # greedy decoding is deterministic and batch-size independent
    assert make_generate_fn(tiny_llama, tokenizer, max_new_tokens=4, batch_size=6)(records) == completions
    result = evaluate(records, generate)
    scores = [score(r, c) for r, c in zip(records, completions)]
    assert result["all"] == pytest.approx(sum(scores) / len(scores))
    sft_entities = [v for r, v in zip(records, scores) if r.get("split") == "sft_entities"]
    assert result["sft_entities"] == pytest.approx(sum(sft_entities) / len(sft_entities))


def test_preference_scorer_matches_an_independent_computation(curriculum, tiny_llama):
    """Every DPO number rests on `preference_margins`. Recomputed here another way: the answer's tokens located by
    the training chat template's assistant mask (not by the prompt's length), their log-probability summed from
    transformers' own loss (mean over the unmasked labels times their count, not our gather)."""
    tokenizer = load_tokenizer()
    training = use_training_chat_template(load_tokenizer())
    records = load_eval_records(curriculum["dpo"]["eval"])[:6]
    margins = preference_margins(tiny_llama, tokenizer, records)
    for record, (split, margin) in zip(records, margins):
        columns = dpo_record_to_columns(record)
        scores = []
        for key in ("chosen", "rejected"):
            encoded = training.apply_chat_template(
                columns["prompt"] + columns[key], return_dict=True, return_assistant_tokens_mask=True
            )
            ids = torch.tensor([encoded["input_ids"]])
            mask = torch.tensor([encoded["assistant_masks"]]).bool()
            labels = ids.masked_fill(~mask, -100)
            with torch.no_grad():
                loss = tiny_llama(input_ids=ids, labels=labels).loss
            scores.append(-loss.item() * int(mask[0, 1:].sum()))
        assert split == record["split"]
        assert margin == pytest.approx(scores[0] - scores[1], abs=1e-3)
    by_split = preference_accuracy(tiny_llama, tokenizer, records)
    assert by_split["all"] == sum(m > 0 for _, m in margins) / len(margins)


def test_ensure_curriculum_caches_in_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_HF_CACHE", str(tmp_path / "cache"))
    paths = ensure_curriculum(seed=3)
    root = tmp_path / "cache" / "curriculum" / f"{CURRICULUM_VERSION}-3"
    assert paths["sft"]["train"] == root / "sft" / "train.jsonl" and paths["sft"]["train"].exists()
    stamp = os.stat(paths["sft"]["train"]).st_mtime_ns
    assert ensure_curriculum(seed=3) == paths and os.stat(paths["sft"]["train"]).st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache" / "curriculum").iterdir()] == [f"{CURRICULUM_VERSION}-3"]
    explicit = ensure_curriculum(tmp_path / "explicit", seed=3)
    assert explicit["dpo"]["eval"].read_bytes() == paths["dpo"]["eval"].read_bytes()


def test_cli(tmp_path, capsys):
    cli_main(["--out", str(tmp_path / "out"), "--seed", "2"])
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["sft"]["train"]).exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == 2


def test_tools():
    world = build_world(0)
    tools = make_tools(world)
    person = world.of_kind("person")[0]
    assert (
        calculator("12 * (3 + 4)") == "84" and calculator("7 / 2") == "3.5" and calculator("1 / 0").startswith("error")
    )
    assert calculator("__import__('os')").startswith("error")
    assert convert_units(5, "km", "m") == "5000" and convert_units(100, "C", "F") == "212"
    assert convert_units(1, "kg", "m").startswith("error")
    assert tools["lookup"](person.name.en, "city") == person.facts["city"].en
    assert tools["lookup"](person.name.zh, "job") == person.facts["job"].zh
    assert execute_tool_call(tools, "lookup", {"entity": "nobody", "attribute": "city"}).startswith("error")
    assert execute_tool_call(tools, "missing", {}).startswith("error")
    assert execute_tool_call(tools, "calculator", {"wrong": 1}).startswith("error")
    names = [s["function"]["name"] for s in tool_schemas(tools)]
    assert names == ["calculator", "convert_units", "lookup"]


def test_passkey_training_documents_fit_one_pretraining_row(curriculum):
    """Every passkey document of `passkey/train.jsonl` (BOS and EOS included) fits the 256-token rows the recipe
    packs, so no key is split from its question; replayed pretraining documents make up the rest."""
    tokenizer = load_tokenizer()
    texts = [r["text"] for r in read(curriculum["passkey"]["train"])]
    keyed = [t for t in texts if "passkey" in t or "密码" in t]  # with the few the replay draws
    assert 18000 <= len(keyed) < 18100 and 20990 < len(texts) < 21010  # replay counts rounded per kind
    lengths = [len(ids) + 2 for ids in tokenizer(keyed, add_special_tokens=False)["input_ids"]]
    assert max(lengths) <= 256 and min(lengths) < 64
