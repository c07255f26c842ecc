"""Chat templates: exact upstream-style rendering, inference/training parity, and assistant masks (directly and
through TRL's SFT tokenisation)."""

import json
import re

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import (
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    parse_response,
    supports_tool_calling,
)

from minimind_hf.chat_templates import (
    RESPONSE_TEMPLATE,
    chat_template_path,
    get_chat_template,
    training_chat_template,
    use_training_chat_template,
)
from minimind_hf.tokenization import load_tokenizer, train_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}

CASES = {
    "single": ([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}], None),
    "system": (
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        None,
    ),
    "multi_turn": (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ],
        None,
    ),
    "tools": (
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "北京和上海天气？"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [CALL, {"name": "get_weather", "arguments": '{"city": "上海"}'}],
            },
            {"role": "tool", "content": "晴"},
            {"role": "tool", "content": "雨"},
            {"role": "assistant", "content": "北京晴，上海雨。"},
        ],
        TOOLS,
    ),
    "think": (
        [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "\n2", "reasoning_content": "\none plus one\n"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": ""},
        ],
        None,
    ),
    "think_in_content": (
        [
            {"role": "user", "content": "3*4?"},
            {"role": "assistant", "content": "<think>\n3*4=12\n</think>\n<answer>\n12\n</answer>"},
        ],
        None,
    ),
    "content_and_tool_call": (
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
        ],
        TOOLS,
    ),
}

EXPECTED = {
    "single": "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
    "<|im_start|>assistant\n你好！<|im_end|>\n",
    "tools": "<|im_start|>system\nUse tools.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
    "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(TOOLS[0], ensure_ascii=False)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n<|im_start|>user\n北京和上海天气？<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "上海"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n晴\n</tool_response>\n'
    "<tool_response>\n雨\n</tool_response><|im_end|>\n<|im_start|>assistant\n北京晴，上海雨。<|im_end|>\n",
    "think": "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\none plus one\n</think>\n\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n",
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def training_tokenizer():
    return use_training_chat_template(load_tokenizer())


def render(tok, case, **kwargs):
    messages, tools = CASES[case]
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_exact_rendering(tokenizer, case):
    assert render(tokenizer, case) == EXPECTED[case]


def test_think_in_content_is_kept_verbatim(tokenizer):
    assert render(tokenizer, "think_in_content").endswith(
        "<|im_start|>assistant\n<think>\n3*4=12\n</think>\n<answer>\n12\n</answer><|im_end|>\n"
    )


def test_tool_call_after_content_starts_on_new_line(tokenizer):
    assert "assistant\nLet me check.\n<tool_call>\n" in render(tokenizer, "content_and_tool_call")


def test_default_system_prompt_switch(tokenizer):
    messages = CASES["single"][0]
    off = tokenizer.apply_chat_template(messages, tokenize=False, default_system_prompt=None)
    custom = tokenizer.apply_chat_template(messages, tokenize=False, default_system_prompt="Hi.")
    assert off.startswith("<|im_start|>user\n")
    assert custom.startswith("<|im_start|>system\nHi.<|im_end|>\n<|im_start|>user\n")
    assert render(tokenizer, "system").startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user")


@pytest.mark.parametrize(
    ("kwargs", "suffix"),
    [
        ({}, "<|im_start|>assistant\n"),
        ({"enable_thinking": True}, "<|im_start|>assistant\n<think>\n"),
        ({"enable_thinking": False}, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        ({"open_thinking": True}, "<|im_start|>assistant\n<think>\n"),
        ({"open_thinking": False}, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        ({"enable_thinking": False, "open_thinking": True}, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ],
)
def test_generation_prompt_thinking_switch(tokenizer, kwargs, suffix):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True, **kwargs
    )
    assert (
        text == "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nq<|im_end|>\n" + suffix
    )


def test_unknown_role_raises(tokenizer):
    with pytest.raises(Exception, match="Unknown message role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def _code_lines(template: str) -> list[str]:
    """Template lines without the leading comment and the generation markers."""
    template = re.sub(r"\{#-.*?-#\}\n", "", template, count=1, flags=re.DOTALL)
    return [
        line for line in template.splitlines() if line.strip() not in ("{%- generation %}", "{%- endgeneration %}")
    ]


def test_training_template_differs_only_by_generation_markers():
    inference, training = get_chat_template("inference"), get_chat_template("training")
    assert _code_lines(training) == _code_lines(inference)
    assert "{%- generation %}" in training and "generation %}" not in inference
    assert chat_template_path("training").name == "minimind_training.jinja"
    with pytest.raises(ValueError):
        chat_template_path("nope")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kwargs", [{}, {"add_generation_prompt": True}, {"default_system_prompt": None}])
def test_variants_render_identically(tokenizer, training_tokenizer, case, kwargs):
    assert render(training_tokenizer, case, **kwargs) == render(tokenizer, case, **kwargs)


def assistant_spans(text: str) -> list[str]:
    """Every assistant reply in rendered text: from after `<|im_start|>assistant\\n` through `<|im_end|>\\n`."""
    spans, start = [], 0
    while (start := text.find("<|im_start|>assistant\n", start)) != -1:
        start += len("<|im_start|>assistant\n")
        end = text.index("<|im_end|>\n", start) + len("<|im_end|>\n")
        spans.append(text[start:end])
        start = end
    return spans


@pytest.mark.parametrize("case", sorted(CASES))
def test_assistant_mask_covers_exactly_assistant_spans(training_tokenizer, case):
    messages, tools = CASES[case]
    out = training_tokenizer.apply_chat_template(
        messages, tools=tools, return_assistant_tokens_mask=True, return_dict=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    text = training_tokenizer.decode(ids)
    # group masked tokens into contiguous runs and compare each run's text with the expected span
    runs, current = [], []
    for token_id, flag in zip(ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    expected = assistant_spans(text)
    assert [training_tokenizer.decode(run) for run in runs] == expected
    assert len(expected) == sum(m["role"] == "assistant" for m in messages)
    assert all(span.endswith("<|im_end|>\n") for span in expected)


def test_trl_checks_accept_the_templates(tokenizer, training_tokenizer):
    assert supports_tool_calling(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)
    assert is_chat_template_stop_token_trained(training_tokenizer)


@pytest.mark.parametrize(
    "reply",
    [
        {"role": "assistant", "content": "The answer is 110."},
        {"role": "assistant", "reasoning_content": "41 plus 69", "content": "110"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "41 + 69"}}},
                {
                    "type": "function",
                    "function": {"name": "lookup", "arguments": {"entity": "托瓦拉", "attribute": "country"}},
                },
            ],
        },
    ],
)
def test_trl_parses_rendered_replies_with_the_shipped_response_template(tokenizer, reply):
    # TRL's GRPO tool loop reads generated turns with parse_response: every reply the template renders parses back
    prompt = [{"role": "user", "content": "41 + 69?"}]
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, reply], tokenize=False)
    assert full.startswith(head)
    ids = tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
    parsed = parse_response(tokenizer, ids, prefix=tokenizer(head, add_special_tokens=False)["input_ids"])
    assert parsed == reply
    assert tokenizer.response_template == RESPONSE_TEMPLATE
    # a new tokenizer trained with the package's template carries it too
    assert train_tokenizer(["a b c"] * 10, vocab_size=300).response_template == RESPONSE_TEMPLATE


def test_trl_sft_assistant_only_labels(tmp_path, training_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=6400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    rows = [
        {"messages": CASES[c][0], "tools": json.dumps(CASES[c][1]) if CASES[c][1] else None} for c in sorted(CASES)
    ]
    # Arrow needs one type per column: tool-call arguments as JSON strings (what minimind_hf.data produces)
    for row in rows:
        for message in row["messages"]:
            for call in message.get("tool_calls") or []:
                body = call.get("function", call)
                if not isinstance(body["arguments"], str):
                    body["arguments"] = json.dumps(body["arguments"], ensure_ascii=False)
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        report_to=[],
        max_steps=1,
        use_cpu=True,
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=training_tokenizer,
    )
    assert len(trainer.train_dataset) == len(rows)
    for processed in trainer.train_dataset:
        labels = processed["labels"]
        kept = [t for t, label in zip(processed["input_ids"], labels) if label != -100]
        text = training_tokenizer.decode(processed["input_ids"])
        assert training_tokenizer.decode(kept) == "".join(assistant_spans(text))


def test_training_chat_template_block_restores_the_inference_template_even_on_error():
    tokenizer = load_tokenizer()
    inference = tokenizer.chat_template
    with training_chat_template(tokenizer):
        assert tokenizer.chat_template == get_chat_template("training")
    assert tokenizer.chat_template == inference
    with pytest.raises(RuntimeError), training_chat_template(tokenizer):
        raise RuntimeError("training failed")
    assert tokenizer.chat_template == inference
