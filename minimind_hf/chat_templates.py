"""MiniMind's ChatML chat templates: the inference template and its training variant.

Both render byte-identical text. The training variant wraps every assistant reply (reasoning block, content, tool
calls, `<|im_end|>` and its newline, as upstream's loss mask) in `{% generation %}` markers, which is what
`apply_chat_template(..., return_assistant_tokens_mask=True)` and TRL's `assistant_only_loss=True` need.

Template kwargs: `default_system_prompt` (MiniMind2's "You are a helpful assistant" when the conversation has no
system turn and no tools; `None` or `""` turns it off) and `enable_thinking` (alias `open_thinking`: `True` opens
a `<think>` block after the generation prompt, `False` adds an empty closed one, unset adds nothing).

[`RESPONSE_TEMPLATE`] describes how the template writes an assistant turn, for transformers' `parse_response` (set as
the tokenizer's `response_template`, shipped in its `tokenizer_config.json`): TRL's GRPO tool loop reads the model's
`<tool_call>` blocks through it.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path

CHAT_TEMPLATE_FILES = {"inference": "minimind.jinja", "training": "minimind_training.jinja"}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"

# An assistant turn as the templates write it, in transformers' `response_template` format: after the assistant header,
# an optional `<think>` block (-> `reasoning_content`), then the content and any number of `<tool_call>` blocks of
# JSON `{"name", "arguments"}` (-> OpenAI `tool_calls`), up to `<|im_end|>`.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": "</think>\\s*", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": "</tool_call>\\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": "<\\|im_end\\|>\\s*", "content": "text"},
    },
}


def chat_template_path(variant: str = "inference") -> Path:
    """Path of the shipped template file for `variant` (`"inference"` or `"training"`); usable as TRL's
    `SFTConfig.chat_template_path`."""
    if variant not in CHAT_TEMPLATE_FILES:
        raise ValueError(f"unknown chat template variant {variant!r}; choose one of {sorted(CHAT_TEMPLATE_FILES)}")
    return Path(str(resources.files("minimind_hf") / "assets" / "chat_templates" / CHAT_TEMPLATE_FILES[variant]))


def get_chat_template(variant: str = "inference") -> str:
    """The Jinja source of the inference or training template."""
    return chat_template_path(variant).read_text(encoding="utf-8")


def use_training_chat_template(tokenizer):
    """Sets the training variant on `tokenizer` (in place) and returns it. Rendering is unchanged; only assistant masks
    become available. Put the inference template back with `tokenizer.chat_template = get_chat_template()` before
    saving if the checkpoint is meant for tools without `{% generation %}` support (llama.cpp, ollama)."""
    tokenizer.chat_template = get_chat_template("training")
    return tokenizer


@contextlib.contextmanager
def training_chat_template(tokenizer):
    """Inside the block `tokenizer` carries the training variant (assistant masks for TRL's `assistant_only_loss`); on
    exit its inference template is back, so a model saved after training ships the plain template."""
    inference_template = tokenizer.chat_template or get_chat_template()
    use_training_chat_template(tokenizer)
    try:
        yield tokenizer
    finally:
        tokenizer.chat_template = inference_template
