"""An OpenAI-compatible chat server for a MiniMind checkpoint: any stage's output folder, or a PEFT (LoRA) adapter
folder (loaded as the terminal chat loads it, [`minimind_hf.chat.load_model_and_tokenizer`]).

    pip install -e ".[serve]"
    minimind-serve --model outputs/tiny/sft                          # http://127.0.0.1:8000/v1
    minimind-serve --model outputs/tiny/sft --port 8080 --api-key "$KEY" --max-tokens-limit 512
    python -m minimind_hf.serve --model outputs/tiny/sft --model-name minimind

Endpoints: `GET /v1/models` and `POST /v1/chat/completions`, non-streaming or streaming (server-sent events
`data: {chunk}`, ending with `data: [DONE]`). A request may carry:
    messages          system (or developer), user, assistant (with `reasoning_content` and `tool_calls`) and tool
                      turns; content as a string or text parts
    tools             function schemas, rendered by the MiniMind chat template; generated `<tool_call>` blocks come
                      back as `tool_calls` with finish_reason `tool_calls` (`tool_choice` "auto" or "none")
    thinking          `enable_thinking` (or upstream MiniMind's `open_thinking`) in the body or in
                      `chat_template_kwargs`: true opens a `<think>` block, false adds an empty one, unset lets the
                      model decide; the reasoning comes back as `reasoning_content`
    sampling          `temperature` (0: greedy; default 1), `top_p`, `seed`, `max_tokens` / `max_completion_tokens`
                      (default and maximum: `--max-tokens-limit`, and what the context leaves), `stop` (up to 4
                      strings, cut from the reply), `stream_options.include_usage`
Other OpenAI fields are ignored, except the ones a caller would rely on (`n` > 1, `logprobs`, a JSON
`response_format`, a required or named `tool_choice`), which are refused.

Why this exists: `transformers serve` cannot load a MiniMind folder (it looks the model class up as an attribute of the
`transformers` module, where a registered or remote-code class is not), and vLLM / llama.cpp serve exported copies
(`convert/`). This module holds only what no maintained server offers for a MiniMind folder: loading it, rendering
requests with its chat template, and turning `<think>` and `<tool_call>` blocks into `reasoning_content` and
`tool_calls`. Generation is transformers' `model.generate` (with `AsyncTextIteratorStreamer` when streaming), one
request at a time behind a lock: no batching, meant for local use, demos and tests.

Hardening: binds 127.0.0.1 unless `--host` says otherwise; `--api-key` (or `MINIMIND_API_KEY`) requires
`Authorization: Bearer KEY`; request bodies over `--max-request-bytes` get 413; malformed JSON, an unknown model,
bad roles or fields, `max_tokens` over the limit and prompts longer than the context get 4xx, all with OpenAI's
error body `{"error": {"message", "type", "param", "code"}}`. A client that disconnects stops its generation at the
next token, which frees the server for the next request.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import (
    AsyncTextIteratorStreamer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
)
from transformers.utils import logging as hf_logging

from .chat import DTYPES, THINK_CLOSE, THINK_OPEN, _StopOnEvent, load_model_and_tokenizer
from .rewards import tool_calls as parse_tool_call_blocks

logger = logging.getLogger(__name__)

TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)
ROLES = ("system", "developer", "user", "assistant", "tool")
# Template kwargs a request may set: anything else (`chat_template`, `tokenize`, ...) would reach apply_chat_template.
TEMPLATE_KWARGS = ("enable_thinking", "open_thinking", "default_system_prompt")
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """A request the server refuses, answered with `status` and OpenAI's error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


@dataclass
class Reply:
    """A reply split into the OpenAI message fields: `reasoning` (`None` when the reply has no think block),
    `content`, and `tool_calls` as `{"name", "arguments"}` dicts."""

    reasoning: str | None
    content: str
    tool_calls: list[dict] = field(default_factory=list)


def _drop_partial(text: str, tag: str) -> str:
    """`text` without a trailing beginning of `tag` (a tag still being generated)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return text[:-size]
    return text


def parse_reply(text: str, prompt: str, parse_tools: bool, final: bool = True) -> Reply:
    """Splits generated text into reasoning, content and tool calls.

    Reasoning: when the prompt opened a think block (it ends with `<think>\\n`, thinking on) the reply starts inside
    it; otherwise the reply has reasoning only when it starts with `<think>`. The block ends at the first `</think>`
    (an unclosed one is all reasoning). The split is decided by the start of the reply, so a streamed reply never takes
    back text it already sent. Reasoning and content are trimmed of newlines as the chat template writes them.

    Tool calls (when `parse_tools`): each complete `<tool_call>` block of the content that parses
    ([`minimind_hf.rewards.tool_calls`]) becomes a call and leaves the content (then stripped of trailing space); a
    block that does not parse, or is cut off, stays in the content.

    With `final=False` (a reply still being generated) whatever may still change is held back: an undecided start,
    a tag being generated, and with tools everything from the first `<tool_call>` on, so the parts returned are
    prefixes of those of the finished reply.
    """
    body = None
    if prompt.endswith(THINK_OPEN + "\n"):
        body = text
    elif text.lstrip().startswith(THINK_OPEN):
        body = text.lstrip()[len(THINK_OPEN) :]
    elif not final and THINK_OPEN.startswith(text.lstrip()):
        return Reply(None, "")
    reasoning = None
    if body is not None:
        thought, closed, answer = body.partition(THINK_CLOSE)
        reasoning = (thought if final or closed else _drop_partial(thought, THINK_CLOSE)).strip("\n")
        text = answer.lstrip("\n") if closed else ""
    if not parse_tools:
        return Reply(reasoning, text)
    if not final:
        return Reply(reasoning, _drop_partial(text.split(TOOL_CALL_OPEN, 1)[0], TOOL_CALL_OPEN).rstrip())
    calls = []

    def take(match: re.Match) -> str:
        call = parse_tool_call_blocks(match.group(0))[0]
        if call is None:
            return match.group(0)
        calls.append(call)
        return ""

    content = _TOOL_CALL_BLOCK.sub(take, text)
    return Reply(reasoning, content.rstrip() if calls else text, calls)


def openai_tool_call(call: dict, index: int | None = None) -> dict:
    """An OpenAI `tool_calls` entry (arguments as a JSON string) for a parsed `{"name", "arguments"}` call."""
    entry = {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)},
    }
    return entry if index is None else {"index": index, **entry}


def chat_message(reply: Reply) -> dict:
    """The non-streaming response's assistant message (`content` is `None` for a reply that is only tool calls)."""
    message = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else "")}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [openai_tool_call(call) for call in reply.tool_calls]
    return message


def cut_at_stop(text: str, stop: list[str], final: bool = True) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one occurred; while generating (`final=False`) the last
    characters that could begin a stop string are held back."""
    found = [text.find(s) for s in stop if s in text]
    if found:
        return text[: min(found)], True
    if not final and stop:
        return text[: max(0, len(text) - max(map(len, stop)) + 1)], False
    return text, False


class ReplyStream:
    """Turns a reply generated piece by piece into chunk deltas whose concatenation is the finished reply.

    [`feed`] each piece of text as it is generated; [`finish`] once generation ends. Both return the deltas to send;
    the parts come from [`parse_reply`], so the non-streaming response is `finish()` after one `feed(whole_text)`.
    """

    def __init__(self, prompt: str, parse_tools: bool, stop: list[str] | None = None):
        self.prompt, self.parse_tools, self.stop = prompt, parse_tools, stop or []
        self.text = ""
        self.sent = {"reasoning_content": "", "content": ""}
        self.reply: Reply | None = None
        self.stopped = False

    def _parse(self, final: bool) -> Reply:
        text, self.stopped = cut_at_stop(self.text, self.stop, final)
        return parse_reply(text, self.prompt, self.parse_tools, final)

    def _deltas(self, reply: Reply) -> list[dict]:
        deltas = []
        for key, text in (("reasoning_content", reply.reasoning or ""), ("content", reply.content)):
            sent = self.sent[key]
            if len(text) > len(sent) and text.startswith(sent):
                deltas.append({key: text[len(sent) :]})
                self.sent[key] = text
        return deltas

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        return self._deltas(self._parse(final=False))

    def finish(self) -> list[dict]:
        self.reply = self._parse(final=True)
        deltas = self._deltas(self.reply)
        if self.reply.tool_calls:
            deltas.append({"tool_calls": [openai_tool_call(c, i) for i, c in enumerate(self.reply.tool_calls)]})
        return deltas


@dataclass
class ChatRequest:
    """A validated chat completion request, rendered and tokenized."""

    prompt: str
    input_ids: torch.Tensor
    max_new_tokens: int
    parse_tools: bool
    stream: bool = False
    include_usage: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


def _number(body: dict, name: str, low: float, high: float, integer: bool = False, default=None):
    value = body.get(name)
    if value is None:
        return default
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"`{name}` must be {kind} from {low} to {high}; got {value!r}", name, "invalid_value")
    return value


def _flag(source: dict, name: str, param: str | None = None) -> bool | None:
    value = source.get(name)
    if value is not None and not isinstance(value, bool):
        raise APIError(400, f"`{param or name}` must be true or false; got {value!r}", param or name, "invalid_type")
    return value


def _tool_call_entries(calls, param: str) -> list[dict]:
    if not isinstance(calls, list):
        raise APIError(400, f"`{param}` must be a list", param, "invalid_type")
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(400, f"`{param}[{i}]` must be {{'function': {{'name', 'arguments'}}}}", f"{param}[{i}]")
        if not isinstance(function.get("arguments", "{}"), str | dict):
            raise APIError(400, f"`{param}[{i}].function.arguments` must be a JSON string", f"{param}[{i}]")
    return calls


def parse_messages(messages) -> list[dict]:
    """The request's messages as the chat template takes them; raises [`APIError`] (400) for anything else."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "`messages` must be a non-empty list", "messages", "invalid_value")
    parsed = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"`{param}` must be an object", param, "invalid_type")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise APIError(400, f"`{param}.role` must be one of {', '.join(ROLES)}; got {role!r}", f"{param}.role")
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise APIError(400, f"`{param}.content` may only hold text parts", f"{param}.content")
            content = "".join(part["text"] for part in content)
        elif content is None and role == "assistant":
            content = ""
        elif not isinstance(content, str):
            raise APIError(400, f"`{param}.content` must be a string or a list of text parts", f"{param}.content")
        entry = {"role": "system" if role == "developer" else role, "content": content}
        if role == "assistant":
            if isinstance(message.get("reasoning_content"), str):
                entry["reasoning_content"] = message["reasoning_content"]
            if message.get("tool_calls"):
                entry["tool_calls"] = _tool_call_entries(message["tool_calls"], f"{param}.tool_calls")
        parsed.append(entry)
    return parsed


def parse_tools(body: dict) -> list[dict] | None:
    """The request's `tools` to render (`None` for none, or with `tool_choice` "none")."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise APIError(400, "only `tool_choice` 'auto' and 'none' are supported", "tool_choice", "unsupported_value")
    if tools is None or choice == "none":
        return None
    if not isinstance(tools, list):
        raise APIError(400, "`tools` must be a list", "tools", "invalid_type")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise APIError(400, f"`tools[{i}]` must be {{'type': 'function', 'function': {{...}}}}", f"tools[{i}]")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise APIError(400, f"`tools[{i}].function.name` must be a non-empty string", f"tools[{i}].function.name")
    return tools or None


def template_kwargs(body: dict) -> dict:
    """Chat template kwargs from the request: `chat_template_kwargs` (only the MiniMind template's own), over
    top-level `enable_thinking` / `open_thinking`; the thinking switch always as `enable_thinking`."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict) or set(kwargs) - set(TEMPLATE_KWARGS):
        allowed = ", ".join(TEMPLATE_KWARGS)
        raise APIError(400, f"`chat_template_kwargs` may only set {allowed}", "chat_template_kwargs", "invalid_value")
    sources = [(kwargs, "chat_template_kwargs."), (body, "")]
    thinking = None
    for source, prefix in sources:
        for name in ("enable_thinking", "open_thinking"):
            value = _flag(source, name, prefix + name)
            thinking = value if thinking is None else thinking
    rendered = {}
    if "default_system_prompt" in kwargs:
        if not isinstance(kwargs["default_system_prompt"], str | None):
            raise APIError(400, "`default_system_prompt` must be a string", "chat_template_kwargs", "invalid_type")
        rendered["default_system_prompt"] = kwargs["default_system_prompt"]
    if thinking is not None:
        rendered["enable_thinking"] = thinking
    return rendered


def render_prompt(tokenizer: PreTrainedTokenizerBase, body: dict) -> tuple[str, bool]:
    """The text the model continues for a request, and whether tool calls are to be parsed from the reply."""
    messages, tools = parse_messages(body.get("messages")), parse_tools(body)
    try:
        prompt = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True, **template_kwargs(body)
        )
    except (TemplateError, TypeError, ValueError) as error:
        raise APIError(400, f"the chat template refused the messages: {error}", "messages", "invalid_value") from error
    return prompt, tools is not None


def create_app(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    api_key: str | None = None,
    max_tokens_limit: int = 2048,
    max_request_bytes: int = 1 << 20,
) -> FastAPI:
    """The OpenAI-compatible server for `model` as a FastAPI app (serve it with uvicorn).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The causal LM, in eval mode on its device.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer, with the chat template that renders requests.
        model_name (`str`):
            The one model id `/v1/models` lists and requests must name.
        api_key (`str`, *optional*):
            When set, every request needs `Authorization: Bearer <api_key>`.
        max_tokens_limit (`int`, *optional*, defaults to 2048):
            Largest `max_tokens` a request may ask for, and the default.
        max_request_bytes (`int`, *optional*, defaults to 1 MiB):
            Largest request body.
    """
    app = FastAPI(title="minimind_hf", docs_url=None, redoc_url=None, openapi_url=None)
    generation_lock = threading.Lock()
    created = int(time.time())
    context = model.config.max_position_embeddings

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return APIError(500, f"internal error: {type(error).__name__}").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        too_large = APIError(413, f"the request body is over {max_request_bytes} bytes", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_request_bytes:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_request_bytes:
                raise too_large
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise APIError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from error
        if not isinstance(parsed, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return parsed

    def prepare(body: dict) -> ChatRequest:
        name = body.get("model")
        if not isinstance(name, str):
            raise APIError(400, "`model` must be a string", "model", "invalid_type")
        if name != model_name:
            raise APIError(
                404, f"the model `{name}` does not exist; this server has `{model_name}`", "model", "model_not_found"
            )
        prompt, tools = render_prompt(tokenizer, body)
        input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        room = context - input_ids.shape[1]
        if room < 1:
            message = f"the prompt is {input_ids.shape[1]} tokens; the model's context is {context}"
            raise APIError(400, message, "messages", "context_length_exceeded")
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _number(body, name, 1, max_tokens_limit, integer=True, default=max_tokens_limit)
        if body.get("n") not in (None, 1):
            raise APIError(400, "only `n` = 1 is supported", "n", "unsupported_value")
        if body.get("logprobs"):
            raise APIError(400, "`logprobs` is not supported", "logprobs", "unsupported_value")
        response_format = body.get("response_format")
        if response_format is not None and (
            not isinstance(response_format, dict) or response_format.get("type") != "text"
        ):
            raise APIError(400, "only `response_format` {'type': 'text'} is supported", "response_format")
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop or []
        if (
            not isinstance(stop, list)
            or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise APIError(400, f"`stop` must be a string or up to {MAX_STOP_STRINGS} non-empty strings", "stop")
        stream = bool(_flag(body, "stream"))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, "`stream_options` must be an object", "stream_options", "invalid_type")
        return ChatRequest(
            prompt=prompt,
            input_ids=input_ids,
            max_new_tokens=min(max_tokens, room),
            parse_tools=tools,
            stream=stream,
            include_usage=bool(_flag(options, "include_usage", "stream_options.include_usage")),
            temperature=_number(body, "temperature", 0, 2, default=1.0),
            top_p=_number(body, "top_p", 1e-6, 1, default=1.0),
            seed=_number(body, "seed", -(2**63), 2**64 - 1, integer=True),
            stop=stop,
        )

    async def start(job: ChatRequest, stop: threading.Event, streamer=None) -> asyncio.Future:
        """Waits for the generation lock, then runs `generate` on a worker thread, which releases the lock when
        generation ends; returns the future of the generated token ids."""
        # Polled rather than awaited: a waiting request that is cancelled (its client gone) then holds nothing.
        while not generation_lock.acquire(blocking=False):
            await asyncio.sleep(0.01)
        kwargs = {
            "input_ids": job.input_ids.to(model.device),
            "attention_mask": torch.ones_like(job.input_ids).to(model.device),
            "max_new_tokens": job.max_new_tokens,
            "do_sample": job.temperature > 0,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "stopping_criteria": StoppingCriteriaList([_StopOnEvent(stop)]),
            "streamer": streamer,
        }
        if job.temperature > 0:  # greedy decoding gets no sampling knobs (they would only warn)
            kwargs.update(temperature=job.temperature, top_p=job.top_p, top_k=0)
        if job.stop:
            kwargs.update(stop_strings=job.stop, tokenizer=tokenizer)

        def run() -> torch.Tensor:
            try:
                if job.seed is not None:
                    torch.manual_seed(job.seed)
                with torch.no_grad():
                    new_ids = model.generate(**kwargs)[0, job.input_ids.shape[1] :].cpu()
                if stop.is_set() and len(new_ids) < job.max_new_tokens and tokenizer.eos_token_id not in new_ids:
                    logger.info("generation stopped after %d tokens: the client disconnected", len(new_ids))
                return new_ids
            except BaseException:
                if streamer is not None:
                    streamer.end()  # without the end signal the consumer would wait forever
                raise
            finally:
                generation_lock.release()

        try:
            return asyncio.get_running_loop().run_in_executor(None, run)
        except BaseException:
            generation_lock.release()
            raise

    def finish_reason(job: ChatRequest, stream: ReplyStream, new_ids: torch.Tensor) -> str:
        if stream.reply.tool_calls:
            return "tool_calls"
        ended = len(new_ids) and new_ids[-1].item() == tokenizer.eos_token_id
        return "length" if len(new_ids) >= job.max_new_tokens and not ended and not stream.stopped else "stop"

    def usage(job: ChatRequest, new_ids: torch.Tensor) -> dict:
        prompt_tokens = job.input_ids.shape[1]
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(new_ids),
            "total_tokens": prompt_tokens + len(new_ids),
        }

    async def complete(job: ChatRequest, request: Request) -> dict:
        stop = threading.Event()
        try:
            future = await start(job, stop)
            while not (await asyncio.wait({future}, timeout=0.25))[0]:
                if await request.is_disconnected():
                    stop.set()
            new_ids = await future
        finally:
            stop.set()
        stream = ReplyStream(job.prompt, job.parse_tools, job.stop)
        stream.feed(tokenizer.decode(new_ids, skip_special_tokens=True))
        stream.finish()
        choice = {"index": 0, "message": chat_message(stream.reply), "logprobs": None}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{**choice, "finish_reason": finish_reason(job, stream, new_ids)}],
            "usage": usage(job, new_ids),
        }

    async def events(job: ChatRequest, request: Request):
        stop = threading.Event()
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = model_name

        def event(delta: dict, finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice]}, ensure_ascii=False)}\n\n"

        streamer = AsyncTextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        stream = ReplyStream(job.prompt, job.parse_tools, job.stop)
        try:
            future = await start(job, stop, streamer)
            yield event({"role": "assistant", "content": ""})
            async for piece in streamer:
                # Servers on ASGI spec 2.4 do not cancel this generator when the client leaves: ask.
                if await request.is_disconnected():
                    stop.set()
                    return
                for delta in stream.feed(piece):
                    yield event(delta)
            new_ids = await future
            for delta in stream.finish():
                yield event(delta)
            yield event({}, finish_reason(job, stream, new_ids))
            if job.include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage(job, new_ids)})}\n\n"
        except Exception as error:  # the status line is sent: report the error in the stream
            logger.exception("streamed generation failed")
            body = {"message": f"internal error: {type(error).__name__}", "type": "server_error", "param": None}
            yield f"data: {json.dumps({'error': {**body, 'code': None}})}\n\n"
        finally:
            # Also reached when the server cancels the stream because the client left: stops generation.
            stop.set()
        yield "data: [DONE]\n\n"

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorize(request)
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "minimind_hf"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        job = prepare(await read_json(request))
        if job.stream:
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(events(job, request), media_type="text/event-stream", headers=headers)
        return await complete(job, request)

    return app


def serve_in_thread(app, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serves an ASGI `app` with uvicorn on a free port of `host` in a daemon thread (the tests, the load benchmark,
    the web chat's `--model`); returns the base URL of its OpenAI API and a function that stops it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the model server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://{host}:{server.servers[0].sockets[0].getsockname()[1]}/v1", stop


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="minimind-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="checkpoint folder (any stage) or PEFT adapter folder")
    parser.add_argument("--model-name", help="the model id clients send (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("MINIMIND_API_KEY"),
        help="required bearer token (default: $MINIMIND_API_KEY)",
    )
    parser.add_argument("--max-tokens-limit", type=int, default=2048, help="largest (and default) max_tokens")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: the checkpoint's dtype")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    if not _is_loopback(args.host) and not args.api_key:
        print(
            f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr
        )
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    name = args.model_name or Path(args.model).resolve().name
    app = create_app(model, tokenizer, name, args.api_key, args.max_tokens_limit, args.max_request_bytes)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
