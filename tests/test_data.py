"""Data layer: upstream readers -> TRL columns, validation errors, seeded augmentations, reasoning tag weights."""

import json
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset
from trl.data_utils import is_conversational, maybe_apply_chat_template

from minimind_hf.data import (
    EMPTY_THINK,
    DataValidationError,
    add_random_system_prompt,
    conversation_to_messages,
    load_dpo_dataset,
    load_pretrain_dataset,
    load_reasoning_dataset,
    load_rl_dataset,
    load_sft_dataset,
    strip_empty_think,
    validate_jsonl,
)
from minimind_hf.tokenization import load_tokenizer, train_tokenizer
from minimind_hf.trainers import reasoning_tag_weights

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def load(reader, name, tmp_path, **kwargs):
    return reader(FIXTURES / name, cache_dir=str(tmp_path / "cache"), **kwargs)


def test_pretrain_reader(tmp_path):
    ds = load(load_pretrain_dataset, "pretrain.jsonl", tmp_path)
    assert ds.column_names == ["text"] and len(ds) == 3
    assert ds[1]["text"] == "The quick brown fox jumps over the lazy dog."


def test_sft_reader_columns_and_conversion(tmp_path, tokenizer):
    ds = load(load_sft_dataset, "sft.jsonl", tmp_path)
    assert ds.column_names == ["messages", "tools"] and len(ds) == 4
    assert all(is_conversational(row) for row in ds)
    tool_row = ds[2]
    assert json.loads(tool_row["tools"])[0]["function"]["name"] == "get_weather"
    calls = tool_row["messages"][2]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "北京"}, {"city": "上海"}]
    assert [m["role"] for m in tool_row["messages"]] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert ds[3]["messages"][1]["reasoning_content"] == "1 plus 1 is 2."
    # TRL's SFT path: json-decoded tools + messages render through the shipped template
    text = tokenizer.apply_chat_template(tool_row["messages"], tools=json.loads(tool_row["tools"]), tokenize=False)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "上海"}}\n</tool_call>' in text
    assert (
        "<|im_start|>user\n<tool_response>\n晴\n</tool_response>\n<tool_response>\n雨\n</tool_response><|im_end|>"
        in text
    )
    rendered = tokenizer.apply_chat_template(ds[3]["messages"], tokenize=False)
    assert "<|im_start|>assistant\n<think>\n1 plus 1 is 2.\n</think>\n\n2<|im_end|>" in rendered


def test_dpo_reader_explicit_prompt(tmp_path, tokenizer):
    ds = load(load_dpo_dataset, "dpo.jsonl", tmp_path)
    assert ds.column_names == ["prompt", "chosen", "rejected", "tools"]
    row = ds[1]
    assert [m["content"] for m in row["prompt"]] == ["What is 2+2?"]
    assert row["chosen"][0]["content"] == "4" and row["rejected"][0]["content"] == "5"
    out = maybe_apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer)
    assert out["prompt"].endswith("<|im_start|>assistant\n") and out["chosen"] == "4<|im_end|>\n"


def test_rl_reader_prompt_only_and_gt(tmp_path):
    ds = load(load_rl_dataset, "rlaif.jsonl", tmp_path)
    assert ds.column_names == ["prompt", "gt", "tools"]
    assert [m["role"] for m in ds[0]["prompt"]] == ["user"] and ds[0]["gt"] == []
    agent = load(load_rl_dataset, "agent_rl.jsonl", tmp_path)
    assert agent[0]["gt"] == ["晴", "25"] and json.loads(agent[0]["tools"])[0]["function"]["name"] == "get_weather"
    assert [m["role"] for m in agent[0]["prompt"]] == ["system", "user"]


def test_reasoning_reader(tmp_path):
    ds = load(load_reasoning_dataset, "r1.jsonl", tmp_path)
    assert "<think>" in ds[0]["messages"][1]["content"]
    with pytest.raises(DataValidationError, match=r"rlaif\.jsonl:1: conversations\[1\]\.content: expected a <think>"):
        load(load_reasoning_dataset, "rlaif.jsonl", tmp_path)


def test_streaming_matches_in_memory(tmp_path):
    streamed = load(load_sft_dataset, "sft.jsonl", tmp_path, streaming=True)
    assert isinstance(streamed, IterableDataset)
    assert list(streamed) == list(load(load_sft_dataset, "sft.jsonl", tmp_path))


def test_pretrain_bos_token(tmp_path):
    plain = load(load_pretrain_dataset, "pretrain.jsonl", tmp_path)
    with_bos = load(load_pretrain_dataset, "pretrain.jsonl", tmp_path, bos_token="<|im_start|>")
    assert [r["text"] for r in with_bos] == ["<|im_start|>" + r["text"] for r in plain]
    streamed = load(load_pretrain_dataset, "pretrain.jsonl", tmp_path, bos_token="<|im_start|>", streaming=True)
    assert list(streamed) == with_bos.to_list()


def test_several_files_in_order(tmp_path):
    ds = load_pretrain_dataset([FIXTURES / "pretrain.jsonl", FIXTURES / "pretrain.jsonl"], cache_dir=str(tmp_path))
    assert len(ds) == 6 and ds[3]["text"] == ds[0]["text"]


def test_cache_follows_file_changes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "one"}\n')
    assert load_pretrain_dataset(path, cache_dir=str(tmp_path / "c"))[0]["text"] == "one"
    path.write_text('{"text": "two, longer"}\n')
    assert load_pretrain_dataset(path, cache_dir=str(tmp_path / "c"))[0]["text"] == "two, longer"


GOOD_SFT = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}

BAD = [
    ("pretrain", [b'{"text": "ok"}', b'{"text": "broken'], 2, "(json)"),
    ("pretrain", [b'{"text": "ok"}', b'{"txt": "x"}'], 2, "text"),
    ("pretrain", [b'{"text": 5}'], 1, "text"),
    ("pretrain", [b'["not", "an", "object"]'], 1, "(record)"),
    ("pretrain", [b'{"text": "ok"}', b'{"text": "caf\xe9"}'], 2, "(encoding)"),
    ("pretrain", [], 1, "(file)"),
    ("pretrain", [b"", b"  "], 1, "(file)"),
    ("sft", [json.dumps(GOOD_SFT).encode(), b'{"messages": []}'], 2, "conversations"),
    ("sft", [b'{"conversations": "hi"}'], 1, "conversations"),
    ("sft", [b'{"conversations": [{"role": "robot", "content": "x"}]}'], 1, "conversations[0].role"),
    ("sft", [b'{"conversations": [{"content": "x"}]}'], 1, "conversations[0].role"),
    ("sft", [b'{"conversations": [{"role": "user", "content": 3}]}'], 1, "conversations[0].content"),
    ("sft", [b'{"conversations": [{"role": "user", "content": "x"}]}'], 1, "conversations"),
    (
        "sft",
        [
            b'{"conversations": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": "[{"}]}'
        ],
        1,
        "conversations[1].tool_calls",
    ),
    (
        "sft",
        [
            b'{"conversations": [{"role": "system", "content": "", "tools": [1]}, {"role": "assistant", "content": "a"}]}'
        ],
        1,
        "conversations[0].tools",
    ),
    (
        "dpo",
        [b'{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'],
        1,
        "rejected",
    ),
    (
        "dpo",
        [
            b'{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
            b'"rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}'
        ],
        1,
        "rejected",
    ),
    ("rl", [b'{"conversations": [{"role": "user", "content": "q"}], "gt": "x"}'], 1, "gt"),
    ("rl", [b'{"conversations": [{"role": "assistant", "content": ""}]}'], 1, "conversations"),
]


@pytest.mark.parametrize(
    ("kind", "lines", "line", "field"), BAD, ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_input_names_file_line_and_field(tmp_path, kind, lines, line, field):
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    with pytest.raises(DataValidationError) as info:
        validate_jsonl(path, kind)
    error = info.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert str(error).startswith(f"{path}:{line}: {field}: ")
    reader = {
        "pretrain": load_pretrain_dataset,
        "sft": load_sft_dataset,
        "dpo": load_dpo_dataset,
        "rl": load_rl_dataset,
    }[kind]
    # the readers validate before building anything, so the same error surfaces (not a datasets wrapper)
    with pytest.raises(DataValidationError, match=f":{line}: "):
        reader(path, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataValidationError):
        reader(path, streaming=True)


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(DataValidationError, match="no such file"):
        load_sft_dataset(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="unknown data kind"):
        validate_jsonl(FIXTURES / "sft.jsonl", "ppo")


def test_conversation_to_messages():
    messages, tools = conversation_to_messages(GOOD_SFT["conversations"])
    assert messages == GOOD_SFT["conversations"] and tools is None
    with pytest.raises(ValueError, match=r"conversations\[0\]\.role"):
        conversation_to_messages([{"role": "bot", "content": ""}])


def sft_rows(n: int = 200) -> Dataset:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], "tools": None}
        for i in range(n)
    ]
    rows[0]["tools"] = "[]"
    rows[1]["messages"].insert(0, {"role": "system", "content": "own"})
    return Dataset.from_list(rows)


def test_random_system_prompt_is_seeded_and_skips_tools_and_system():
    ds = sft_rows()
    first, again, other = (add_random_system_prompt(ds, 0.2, seed) for seed in (0, 0, 1))
    assert first.to_list() == again.to_list() and first.to_list() != other.to_list()
    added = [r["messages"][0]["role"] == "system" for r in first.select(range(2, len(first)))]
    assert 0.1 < sum(added) / len(added) < 0.3
    always = add_random_system_prompt(ds, 1.0, 0)
    assert always[0]["messages"][0]["role"] == "user"
    assert always[1]["messages"][0]["content"] == "own"
    assert all(r["messages"][0]["role"] == "system" for r in always.select(range(2, len(ds))))
    assert add_random_system_prompt(ds, 0.0, 0).to_list() == ds.to_list()


def test_random_system_prompt_streaming_equals_in_memory():
    ds = sft_rows(50)
    streamed = list(add_random_system_prompt(ds.to_iterable_dataset(), 0.5, 3))
    assert streamed == add_random_system_prompt(ds, 0.5, 3).to_list()


def test_strip_empty_think():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": EMPTY_THINK + "a", "reasoning_content": None},
            ],
            "tools": None,
        },
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": ""},
            ],
            "tools": None,
        },
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "real"},
            ],
            "tools": None,
        },
    ]
    ds = Dataset.from_list(rows * 50)
    stripped = strip_empty_think(ds, 1.0, 0)
    assert stripped[0]["messages"][1]["content"] == "a"
    assert stripped[1]["messages"][1]["reasoning_content"] is None
    assert stripped[2]["messages"][1]["reasoning_content"] == "real"
    assert strip_empty_think(ds, 0.0, 0).to_list() == ds.to_list()
    half = strip_empty_think(ds, 0.5, 7)
    assert half.to_list() == strip_empty_think(ds, 0.5, 7).to_list()
    kept = sum(r["messages"][1]["content"].startswith(EMPTY_THINK) for r in half.select(range(0, len(ds), 3)))
    assert 10 < kept < 40


@pytest.fixture(scope="module")
def multi_piece_tokenizer():
    """A byte-level tokenizer without reserved tokens: `<think>` is several pieces, as in upstream MiniMind2."""
    texts = ["<think>\nstep\n</think>\n<answer>\n1\n</answer> a < b > c think answer"] * 30
    return train_tokenizer(texts, vocab_size=300, reserved_tokens=False)


@pytest.mark.parametrize("which", ["shipped", "multi_piece"])
def test_reasoning_tag_weights_cover_exact_tag_spans(which, tokenizer, multi_piece_tokenizer):
    tok = tokenizer if which == "shipped" else multi_piece_tokenizer
    text = "a < b > c think answer\n<think>\nstep\n</think>\n<answer>\n1\n</answer><|im_end|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    weights = reasoning_tag_weights(ids, tok, tag_weight=10.0)
    assert len(weights) == len(ids)
    heavy = "".join(tok.decode([t]) for t, w in zip(ids, weights) if w == 10.0)
    light = [tok.decode([t]) for t, w in zip(ids, weights) if w == 1.0]
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in heavy
    # the stray "<", ">", "think", "answer" before the first tag stay at weight 1
    prefix_ids = tok("a < b > c think answer\n", add_special_tokens=False)["input_ids"]
    assert all(w == 1.0 for w in weights[: len(prefix_ids) - 1])
    assert "step" in "".join(light) and "<|im_end|>" in light
