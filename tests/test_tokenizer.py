"""The shipped tokenizer, the training recipe's functions, and loading upstream-shaped tokenizer folders."""

import gzip
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer
from trl import TrlParser

from minimind_hf.chat_templates import get_chat_template
from minimind_hf.tokenization import (
    RESERVED_TOKENS,
    SPECIAL_TOKENS,
    compression,
    is_chinese,
    iter_text_files,
    load_tokenizer,
    save_tokenizer,
    shipped_tokenizer_path,
    train_tokenizer,
)
from tests.utils import load_script

RECIPE = Path(__file__).parents[1] / "recipes" / "train_tokenizer.py"
TEXTS = [
    "MiniMind 是一个从零训练的小型语言模型。It is small, fast and bilingual.",
    "卡洛·米拉住在托瓦拉。Kalo Mira lives in Tovara. 17 + 25 = 42.",
    "<think>\nstep by step\n</think>\n<answer>\n42\n</answer>",
    "emoji 🙂, tabs\tand  double spaces, ünïcödé, and a newline\n",
]


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


def test_shipped_special_ids(shipped):
    assert len(shipped) == 6400
    assert (shipped.pad_token_id, shipped.unk_token_id, shipped.bos_token_id, shipped.eos_token_id) == (0, 0, 1, 2)
    assert shipped.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)
    assert shipped.convert_ids_to_tokens(list(range(3, 9))) == list(RESERVED_TOKENS)


@pytest.mark.parametrize("token", RESERVED_TOKENS + SPECIAL_TOKENS)
def test_reserved_and_special_tokens_are_single_ids(shipped, token):
    ids = shipped(f"a{token}b", add_special_tokens=False)["input_ids"]
    assert shipped.convert_tokens_to_ids(token) in ids
    assert len(ids) == 3


def test_no_automatic_bos_or_eos(shipped):
    ids = shipped("hello")["input_ids"]
    assert 1 not in ids and 2 not in ids
    assert shipped("hello")["input_ids"] == shipped("hello", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(shipped, text):
    assert shipped.decode(shipped(text)["input_ids"]) == text


def test_reserved_tokens_survive_skip_special_tokens(shipped):
    ids = shipped("<|im_start|><think>\nx\n</think><tool_call>{}</tool_call><|im_end|>")["input_ids"]
    assert shipped.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think><tool_call>{}</tool_call>"


def test_shipped_chat_template_is_the_inference_template(shipped):
    assert shipped.chat_template == get_chat_template("inference")
    config = json.loads((shipped_tokenizer_path() / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and config["bos_token"] == "<|im_start|>"


def test_shipped_compression(shipped):
    # Better than one token per Chinese character or per English syllable; docs/data.md has the recipe's numbers.
    ratios = compression(
        shipped, ["卡洛·米拉住在托瓦拉。卡洛·米拉的职业是医生。", "The favourite colour of Kalo Mira is red."]
    )
    assert ratios["zh"] > 1.0 and ratios["en"] > 3.0


def test_train_save_load_round_trip(tmp_path):
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=400)
    assert len(tokenizer) == 400
    assert tokenizer.convert_ids_to_tokens(list(range(9))) == list(SPECIAL_TOKENS + RESERVED_TOKENS)
    save_tokenizer(tokenizer, tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.chat_template == get_chat_template("inference")


def test_train_without_reserved_tokens():
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=400, reserved_tokens=False)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)
    assert len(tokenizer("<think>", add_special_tokens=False)["input_ids"]) > 1


def test_split_digits_tokenises_a_number_the_same_in_any_context(tmp_path):
    """With `split_digits`, every digit is one token, so a number copied from a question into JSON arguments or from a
    tool reply into an answer is the same tokens; without it BPE learns digit merges that split by context."""
    texts = [f'{a} + {b} = {a + b}. {{"expression": "{a}+{b}"}}' for a in range(100, 400, 7) for b in (12, 35)]
    merged = train_tokenizer(texts * 5, vocab_size=400)
    split = train_tokenizer(texts * 5, vocab_size=400, split_digits=True)
    save_tokenizer(split, tmp_path / "tok")
    split = AutoTokenizer.from_pretrained(tmp_path / "tok")  # the pre-tokenizer is saved with it
    assert any(len(t.strip('Ġ"')) > 1 and t.strip('Ġ"').isdigit() for t in merged.get_vocab())
    for text in (" 4821 + 37", '{"expression": "4821+37"}', "<tool_response>\n28000\n</tool_response>"):
        ids = split(text, add_special_tokens=False)["input_ids"]
        digits = [t.lstrip("Ġ") for t in split.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
        assert all(len(t) == 1 for t in digits), digits
        assert split.decode(ids) == text


UPSTREAM_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else -%}{{- '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture
def upstream_folder(tmp_path):
    """A folder shaped like upstream MiniMind2's model/ tokenizer: a raw `tokenizers` BPE (3 specials, byte-level,
    no post-processor) plus a hand-written tokenizer_config.json with an inline ChatML template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(TEXTS * 10, trainer=trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [],
        "bos_token": "<|im_start|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "legacy": True,
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<|endoftext|>",
        "chat_template": UPSTREAM_TEMPLATE,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=4))
    return tmp_path


def test_upstream_folder_loads_unchanged(upstream_folder):
    before = {p.name: p.read_bytes() for p in upstream_folder.iterdir()}
    tokenizer = load_tokenizer(upstream_folder)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    assert (
        text
        == "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 1 and tokenizer.decode(ids) == text
    assert {p.name: p.read_bytes() for p in upstream_folder.iterdir()} == before


def test_iter_text_files_formats_and_heldout(tmp_path):
    (tmp_path / "a.txt").write_text(
        "line one\nwrapped\n\n中文第一行\n第二行\n\n" + "\n\n".join(f"p{i}" for i in range(8))
    )
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("gz paragraph")
    (tmp_path / "c.html").write_text("<html><style>x{}</style><p>Hello <b>web</b></p><pre>code</pre></html>")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "pretrain"})
        + "\n"
        + json.dumps({"conversations": [{"role": "user", "content": "hi"}]})
        + "\n"
    )
    (tmp_path / "e").write_text("\x1b[32mpoem\x1b[m\nline\n%\nsecond")
    files = [tmp_path / n for n in ("a.txt", "b.txt.gz", "c.html", "d.jsonl", "e")]
    everything = list(iter_text_files(files, "all"))
    assert everything[:2] == ["line one wrapped", "中文第一行第二行"]
    assert "gz paragraph" in everything and "Hello web" in everything and "code" not in " ".join(everything)
    assert {"pretrain", "hi", "poem line", "second"} <= set(everything)
    train, heldout = list(iter_text_files(files[:1], "train", 0.2)), list(iter_text_files(files[:1], "heldout", 0.2))
    assert heldout == ["p6", "p7"] and train + heldout == list(iter_text_files(files[:1], "all"))


def test_is_chinese():
    assert is_chinese("这是一段中文句子 with English")
    assert not is_chinese("English with 一点 Chinese inside it")


def _recipe():
    return load_script(RECIPE)


def test_recipe_yaml_parses_with_its_parser(tmp_path):
    recipe = _recipe()
    (args,) = TrlParser(recipe.TokenizerArguments).parse_args_and_config(
        args=[
            "--config",
            str(RECIPE.parent / "tiny" / "train_tokenizer.yaml"),
            "--output_dir",
            str(tmp_path),
            "--vocab_size",
            "500",
        ]
    )
    assert args.vocab_size == 500 and args.reserved_tokens and args.text_repeats == 3
    assert args.curriculum_seed == 0 and any("debian-reference" in f for f in args.text_files)


def test_recipe_trains_and_reports_compression(tmp_path, capsys):
    recipe = _recipe()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS * 30), encoding="utf-8")
    args = recipe.TokenizerArguments(
        output_dir=str(tmp_path / "tok"),
        vocab_size=350,
        curriculum_seed=None,
        text_files=[str(corpus), "/missing.txt"],
    )
    report = recipe.main(args)
    assert set(report["text_files_heldout"]) <= {"zh", "en"} and report["text_files_heldout"]
    assert len(load_tokenizer(tmp_path / "tok")) == 350
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 350
