"""A tiny MiniMind model that answers the tool prompt below with one fixed reply: a think block and a `get_weather`
call, in our chat template's format. The serving tests use it to check that the engines' reasoning and tool-call
parsers turn that reply into the reasoning field and `tool_calls`.
"""

import functools

import torch
from convert_support import make_tokenizer
from engine_support import greedy_reference

from tests.utils import tiny_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city, e.g. Beijing"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_MESSAGES = [{"role": "user", "content": "What is the weather in Beijing today?"}]
REASONING = "I need the weather."
ARGUMENTS = {"city": "Beijing"}
# The assistant turn as our template writes it for a message with this reasoning and tool call.
ASSISTANT = {
    "role": "assistant",
    "content": "",
    "reasoning_content": REASONING,
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}],
}
# Thinking on: the generation prompt ends with an open `<think>\n` and the model goes on from there.
THINKING = {"enable_thinking": True}


def render(messages: list[dict], **kwargs) -> str:
    return make_tokenizer().apply_chat_template(messages, tools=TOOLS, tokenize=False, **kwargs)


def reply_text() -> str:
    """The memorised reply, from the assistant header to `<|im_end|>`: `<think>\\n...</tool_call><|im_end|>`."""
    prompt = render(TOOL_MESSAGES, add_generation_prompt=True)
    full = render([*TOOL_MESSAGES, ASSISTANT])
    assert full.startswith(prompt) and full.endswith("<|im_end|>\n")
    return full[len(prompt) : -1]


def prompt_ids(**template_kwargs) -> list[int]:
    """Our template's token ids for TOOL_MESSAGES + TOOLS with the generation prompt (what an engine should feed)."""
    return make_tokenizer().apply_chat_template(
        TOOL_MESSAGES, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=True, **template_kwargs
    )["input_ids"]


@functools.cache
def tool_model(steps: int = 200):
    """The tiny dense model (hidden 64) trained to answer the prompt (thinking unset) with `reply_text()`, loss on the
    reply only; a few CPU seconds, cached per process. Its greedy replies are checked before it is returned: with
    thinking on (the prompt ends with `<think>\\n`; the model goes on from there) and unset (it opens the think block
    itself)."""
    tokenizer = make_tokenizer()
    unset = prompt_ids()
    reply = tokenizer(reply_text(), add_special_tokens=False)["input_ids"]
    inputs = torch.tensor([unset + reply])
    labels = torch.tensor([[-100] * len(unset) + reply])

    model = tiny_model("dense", vocab_size=len(tokenizer))
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(input_ids=inputs, labels=labels).loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()

    opener = tokenizer("<think>\n", add_special_tokens=False)["input_ids"]
    assert reply[: len(opener)] == opener
    for prompt, expected in ((prompt_ids(**THINKING), reply[len(opener) :]), (unset, reply)):
        tokens, _ = greedy_reference(model, prompt, len(expected))
        assert tokens == expected, f"reply not memorised: {tokenizer.decode(tokens)!r}"
    return model
