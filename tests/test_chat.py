"""The chat CLI: streamed greedy replies equal `model.generate`, multi-turn history and the thinking switch reach the
rendered prompt, and checkpoint / adapter folders load."""

import io
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from minimind_hf.chat import (
    DIM,
    RESET,
    ChatSession,
    ReplyWriter,
    load_model_and_tokenizer,
    split_reasoning,
    stream_reply,
)
from minimind_hf.tokenization import load_tokenizer
from tests.utils import briefly_trained, tiny_model

MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    # Briefly trained so greedy decoding is not deciding between near-tied logits.
    model = briefly_trained(tiny_model())
    path = tmp_path_factory.mktemp("chat") / "sft"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def greedy_reply(model, tokenizer, prompt: str) -> str:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_cli_replies_equal_generate_over_two_turns(model_dir, tokenizer):
    run = subprocess.run(
        [sys.executable, "-m", "minimind_hf.chat", "--model", str(model_dir), "--greedy"]
        + ["--max_new_tokens", str(MAX_NEW_TOKENS)],
        input="你好\n/think on\nWhat is 2+3?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "thinking on" in run.stderr

    model, _ = load_model_and_tokenizer(model_dir)
    first = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    reply1 = greedy_reply(model, tokenizer, first)
    assert reply1.strip() and "</think>" not in reply1
    history = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": reply1},
        {"role": "user", "content": "What is 2+3?"},
    ]
    second = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert second.startswith(first + reply1 + "<|im_end|>\n")  # the first exchange is part of the second input
    assert second.endswith("<|im_start|>assistant\n<think>\n")
    reply2 = greedy_reply(model, tokenizer, second)
    assert run.stdout == f"{reply1}\n{reply2}\n"


def test_think_switch_changes_rendered_prompt(tokenizer):
    session = ChatSession(tokenizer)
    auto = session.render("hi")
    assert auto.endswith("<|im_start|>assistant\n")
    assert session.command("/think on") == "thinking on"
    assert session.render("hi") == auto + "<think>\n"
    session.command("/think off")
    assert session.render("hi") == auto + "<think>\n\n</think>\n\n"
    session.command("/think auto")
    assert session.render("hi") == auto


def test_history_rerenders_what_was_generated(tokenizer):
    for thinking, reply in ((True, "2 plus 3\n</think>\n\n5"), (False, "5"), (None, "<think>\nsum\n</think>\n\n5")):
        session = ChatSession(tokenizer, thinking=thinking)
        prompt = session.render("2+3?")
        session.add_exchange("2+3?", prompt, reply)
        assert session.render("again").startswith(prompt + reply + "<|im_end|>\n")


def test_commands(tokenizer):
    session = ChatSession(tokenizer)
    session.add_exchange("a", session.render("a"), "b")
    session.command("/system Be brief.")
    assert session.render("c").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\na<|im_end|>")
    session.command("/clear")
    assert session.history == [] and "Be brief." in session.render("c")
    session.command("/system")
    assert "You are a helpful assistant" in session.render("c")
    assert session.command("/exit") is None
    with pytest.raises(ValueError, match="unknown command"):
        session.command("/think maybe")


def test_split_reasoning():
    assert split_reasoning("<think>\nr\n</think>\n\na") == {"reasoning_content": "r", "content": "a"}
    assert split_reasoning("no tags") == {"content": "no tags"}
    assert split_reasoning("a </think> b") == {"content": "a </think> b"}


def test_reply_writer_dims_reasoning_only_on_a_terminal():
    styled = io.StringIO()
    writer = ReplyWriter(styled, style=True, in_think=True)
    for piece in ("step one\n", "</think>\n\nanswer ", "<think>x</think>y"):
        writer(piece)
    assert styled.getvalue() == (
        f"{DIM}step one\n{RESET}{DIM}</think>{RESET}\n\nanswer {DIM}<think>{RESET}{DIM}x</think>{RESET}y"
    )
    plain = io.StringIO()
    ReplyWriter(plain, style=False, in_think=True)("a</think>b")
    assert plain.getvalue() == "a</think>b"


def test_raw_mode_continues_bos_plus_text(tokenizer):
    session = ChatSession(tokenizer, raw=True)
    assert session.render("Once upon") == "<|im_start|>Once upon"
    session.add_exchange("Once upon", session.render("Once upon"), " a time")
    assert session.history == []


def test_folder_without_tokenizer_gets_shipped_one(tmp_path, tokenizer):
    tiny_model().save_pretrained(tmp_path)
    _, loaded = load_model_and_tokenizer(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.chat_template


def test_peft_adapter_folder_loads_merged(tmp_path, tokenizer):
    tiny_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    # Loaded from disk so the adapter records where its base model lives.
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    model, loaded = load_model_and_tokenizer(tmp_path / "adapter")
    ids = torch.arange(3, 20).unsqueeze(0)
    with torch.no_grad():
        expected = lora(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
    assert loaded.get_vocab() == tokenizer.get_vocab()


def chat_cli(model_dir, *args):
    run = subprocess.run(
        [sys.executable, "-m", "minimind_hf.chat", "--model", str(model_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_prompt_flags_sample_reproducibly_and_greedy_equals_generate(model_dir, tokenizer):
    """`--prompt` (repeatable) answers without stdin; sampling flags reach `generate`: a seed repeats a sampled reply,
    another seed changes it; `--greedy` equals `model.generate`."""
    sampled = ["--prompt", "你好", "--max_new_tokens", "24", "--temperature", "1.5", "--top_p", "1.0", "--top_k", "0"]
    first = chat_cli(model_dir, *sampled, "--seed", "1")
    assert first == chat_cli(model_dir, *sampled, "--seed", "1")
    assert first != chat_cli(model_dir, *sampled, "--seed", "2")
    greedy = chat_cli(model_dir, "--prompt", "你好", "--greedy", "--max_new_tokens", str(MAX_NEW_TOKENS))
    model, _ = load_model_and_tokenizer(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    assert greedy == greedy_reply(model, tokenizer, prompt) + "\n"


def test_replies_stream_in_pieces(model_dir, tokenizer):
    model, _ = load_model_and_tokenizer(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    pieces = []
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    reply = stream_reply(model, tokenizer, prompt, kwargs, pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == reply == greedy_reply(model, tokenizer, prompt)
