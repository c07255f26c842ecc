"""A web chat (Gradio) for any OpenAI-compatible endpoint: this project's server, vLLM, llama-server or ollama.

    pip install -e ".[webchat]"
    python -m minimind_hf.webchat --model outputs/quickstart/sft         # UI on http://127.0.0.1:7860
    python -m minimind_hf.webchat --endpoint http://127.0.0.1:8000/v1 --model-name minimind2-small
    python -m minimind_hf.webchat --endpoint http://127.0.0.1:11434/v1 --api-key ollama   # the model: the first listed

With `--model` the folder is served by [`minimind_hf.serve.create_app`] in this process, on a free loopback port, and
the UI talks to it like to any other endpoint, through the `openai` client. Replies stream; reasoning
(`reasoning_content`, or `reasoning` as ollama sends it) shows as a collapsible "Thinking" block, closed once the
answer starts. The settings hold the system prompt, temperature (0: greedy), top_p, max tokens and the thinking
switch: "on" / "off" send `enable_thinking` true / false (top level for our server, and in `chat_template_kwargs` for
vLLM and llama-server); "auto" sends nothing. "Demo tools" offers two tools the chat runs itself (`calculate`,
`current_time`): each call and its result show as a collapsible block, and the reply continues with the result.

Gradio keeps the conversation as its own messages; [`to_openai`] turns them back into OpenAI messages for the next
request (a thinking block becomes the next reply's `reasoning_content`, a tool block a tool call and its `tool` reply).
The UI binds 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import openai

THINKING = "Thinking"
# A tool block's title is TOOL + the tool's name; its `log` (shown beside the title) holds the arguments, its content
# the result.
TOOL = "🛠 "
MAX_TOOL_ROUNDS = 4  # requests per user message: a model that keeps calling tools is stopped after this many
THINKING_CHOICES = {"auto": None, "on": True, "off": False}

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> str:
    """The value of an arithmetic expression: numbers, + - * / // % and parentheses (no powers: they can be huge)."""

    def value(node: ast.AST):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)}")

    return str(value(ast.parse(expression, mode="eval").body))


def current_time(utc_offset_hours: float = 0) -> str:
    zone = datetime.timezone(datetime.timedelta(hours=utc_offset_hours))
    return datetime.datetime.now(zone).isoformat(timespec="seconds")


def _schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = {
    "calculate": (
        calculate,
        _schema("calculate", "Evaluate an arithmetic expression", {"expression": {"type": "string"}}, ["expression"]),
    ),
    "current_time": (
        current_time,
        _schema("current_time", "The current date and time", {"utc_offset_hours": {"type": "number"}}, []),
    ),
}


def run_tool(name: str, arguments: str) -> str:
    """A tool's result as text, or the error, which the model reads like a result."""
    try:
        return TOOLS[name][0](**json.loads(arguments or "{}"))
    except Exception as error:  # a model's bad call is the model's to see, not the chat's to crash on
        return f"error: {type(error).__name__}: {error}"


def text_of(content) -> str:
    """The text of a Gradio message's content: a string, a text part `{"type": "text", "text"}` or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "")
    return "".join(text_of(part) for part in content or [])


def to_openai(history: list[dict], system_prompt: str = "") -> list[dict]:
    """OpenAI chat messages for Gradio's conversation `history` (as the UI shows it, see [`ui_messages`])."""
    messages = [{"role": "system", "content": system_prompt}] if (system_prompt or "").strip() else []
    reasoning = None

    def assistant(content: str, tool_calls: list | None = None) -> None:
        nonlocal reasoning
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if tool_calls:
            message["tool_calls"] = tool_calls
        messages.append(message)
        reasoning = None

    for message in history:
        metadata = message.get("metadata") or {}
        title, text = metadata.get("title") or "", text_of(message["content"])
        if message["role"] != "assistant":
            if reasoning is not None:  # a reply that was all reasoning
                assistant("")
            messages.append({"role": message["role"], "content": text})
        elif title == THINKING:
            reasoning = text
        elif title.startswith(TOOL):
            call_id = f"call_{len(messages)}"
            function = {"name": title.removeprefix(TOOL), "arguments": metadata.get("log") or "{}"}
            assistant("", [{"id": call_id, "type": "function", "function": function}])
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            assistant(text)
    if reasoning is not None:
        assistant("")
    return messages


@dataclass
class Round:
    """One streamed response of a turn, as accumulated so far; `results` holds the results of its tool calls."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments" (JSON text)}
    results: list[str] = field(default_factory=list)
    done: bool = False


def add_delta(step: Round, delta: dict) -> None:
    """Adds a streamed chunk's `delta` (as a dict) to `step`. Tool-call pieces are joined by their `index`, the way
    OpenAI streams them (name and id in the first piece, the arguments in pieces)."""
    step.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
    step.content += delta.get("content") or ""
    for piece in delta.get("tool_calls") or []:
        index = piece.get("index", len(step.tool_calls))
        while len(step.tool_calls) <= index:
            step.tool_calls.append({"id": "", "name": "", "arguments": ""})
        call, function = step.tool_calls[index], piece.get("function") or {}
        call["id"] = piece.get("id") or call["id"]
        call["name"] += function.get("name") or ""
        arguments = function.get("arguments") or ""
        call["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def ui_messages(rounds: list[Round]) -> list[dict]:
    """The turn's Gradio messages: per step, a thinking block (open while only reasoning has come), the answer, and
    a block per tool call (its arguments beside the title, its result inside)."""
    shown = []
    for step in rounds:
        if step.reasoning:
            status = "done" if step.done or step.content or step.tool_calls else "pending"
            shown.append(
                {"role": "assistant", "content": step.reasoning, "metadata": {"title": THINKING, "status": status}}
            )
        if step.content:
            shown.append({"role": "assistant", "content": step.content})
        for i, call in enumerate(step.tool_calls):
            result = step.results[i] if i < len(step.results) else None
            metadata = {
                "title": TOOL + call["name"],
                "log": call["arguments"],
                "status": "pending" if result is None else "done",
            }
            shown.append({"role": "assistant", "content": result or "", "metadata": metadata})
    return shown or [{"role": "assistant", "content": ""}]


def request_options(temperature: float, top_p: float, max_tokens: int, thinking: str, use_tools: bool) -> dict:
    """The `chat.completions.create` keyword arguments for the UI's settings."""
    options = {"temperature": temperature, "top_p": top_p, "max_tokens": int(max_tokens)}
    if THINKING_CHOICES[thinking] is not None:
        switch = {"enable_thinking": THINKING_CHOICES[thinking]}
        options["extra_body"] = {**switch, "chat_template_kwargs": switch}
    if use_tools:
        options["tools"] = [schema for _, schema in TOOLS.values()]
    return options


def respond(client: openai.OpenAI, model_name: str, messages: list[dict], options: dict) -> Iterator[list[dict]]:
    """Streams the reply to `messages`, running the demo tools it calls and asking again with their results; yields
    the turn's UI messages after every chunk."""
    rounds = []
    for _ in range(MAX_TOOL_ROUNDS):
        step = Round()
        rounds.append(step)
        try:
            for chunk in client.chat.completions.create(model=model_name, messages=messages, stream=True, **options):
                for choice in chunk.choices:
                    add_delta(step, choice.delta.model_dump(exclude_none=True))
                yield ui_messages(rounds)
        except openai.APIError as error:
            raise gr.Error(f"{client.base_url}: {error}") from error
        step.done = True
        if not step.tool_calls or "tools" not in options:
            break
        calls = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in step.tool_calls
        ]
        messages = [*messages, {"role": "assistant", "content": step.content, "tool_calls": calls}]
        for call in step.tool_calls:
            step.results.append(run_tool(call["name"], call["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": step.results[-1]})
        yield ui_messages(rounds)
    yield ui_messages(rounds)


def build_ui(
    client: openai.OpenAI,
    model_name: str,
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_tokens: int = 512,
    thinking: str = "auto",
) -> gr.ChatInterface:
    """The web chat for `model_name` at `client`'s endpoint; the other arguments are the settings' initial values."""

    def chat(message, history, system_prompt, temperature, top_p, max_tokens, thinking, use_tools):
        messages = [*to_openai(history, system_prompt), {"role": "user", "content": message}]
        yield from respond(
            client, model_name, messages, request_options(temperature, top_p, max_tokens, thinking, use_tools)
        )

    settings = [
        gr.Textbox(label="System prompt", lines=2),
        gr.Slider(0, 2, value=temperature, step=0.05, label="Temperature (0: greedy)"),
        gr.Slider(0.05, 1, value=top_p, step=0.05, label="top_p"),
        gr.Slider(1, 4096, value=max_tokens, step=1, label="Max tokens"),
        gr.Radio(list(THINKING_CHOICES), value=thinking, label="Thinking"),
        gr.Checkbox(label=f"Demo tools ({', '.join(TOOLS)})"),
    ]
    return gr.ChatInterface(
        chat,
        additional_inputs=settings,
        additional_inputs_accordion=gr.Accordion("Settings", open=False),
        title=f"{model_name} · {client.base_url}",
        analytics_enabled=False,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m minimind_hf.webchat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a checkpoint or PEFT adapter folder, served in this process")
    source.add_argument("--endpoint", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="the endpoint's bearer token")
    parser.add_argument("--model-name", help="the model id to ask for (default: the first the endpoint lists)")
    parser.add_argument("--host", default="127.0.0.1", help="address the UI binds (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--temperature", type=float, default=0.7, help="the setting's initial value")
    parser.add_argument("--max-tokens", type=int, default=512, help="the setting's initial value")
    parser.add_argument("--device", help="for --model (default: cuda when available)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    endpoint = args.endpoint
    if args.model:
        import torch

        from .chat import load_model_and_tokenizer
        from .serve import create_app, serve_in_thread

        model, tokenizer = load_model_and_tokenizer(
            args.model, args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        endpoint, _ = serve_in_thread(create_app(model, tokenizer, args.model_name or Path(args.model).resolve().name))
    client = openai.OpenAI(base_url=endpoint, api_key=args.api_key or "unused")
    name = args.model_name or client.models.list().data[0].id
    ui = build_ui(client, name, temperature=args.temperature, max_tokens=args.max_tokens)
    ui.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
