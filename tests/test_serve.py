"""The OpenAI-compatible server, driven by the real `openai` client (and raw HTTP) over loopback: greedy replies equal
`model.generate` streamed or not, thinking and tools reach the rendered prompt, `<think>` / `<tool_call>` blocks become
`reasoning_content` / `tool_calls`, bad requests get OpenAI-shaped 4xx errors, and a client that leaves mid-stream
frees the server."""

import contextlib
import json
import logging
import time

import pytest
import torch

from minimind_hf.chat import load_model_and_tokenizer
from minimind_hf.tokenization import load_tokenizer
from tests.utils import briefly_trained, tiny_config, tiny_model

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from minimind_hf import serve  # noqa: E402  (needs fastapi)
from minimind_hf.serve import ReplyStream, create_app, parse_reply, render_prompt  # noqa: E402

NAME, KEY = "tiny-sft", "test-key"
MAX_TOKENS = 12
LIMIT = 1000  # the app's max_tokens limit: the disconnect test asks for all of it
MAX_BYTES = 20_000
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好, who are you?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@contextlib.contextmanager
def running(app):
    """The app served by uvicorn on a free loopback port in a background thread; yields its base URL."""
    base_url, stop = serve.serve_in_thread(app)
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, model, tokenizer) of the served app."""
    folder = tmp_path_factory.mktemp("serve") / "sft"
    # Briefly trained so greedy decoding is not deciding between near-tied logits, and replies are not all newlines.
    briefly_trained(tiny_model()).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    model, tokenizer = load_model_and_tokenizer(folder)
    app = create_app(model, tokenizer, NAME, api_key=KEY, max_tokens_limit=LIMIT, max_request_bytes=MAX_BYTES)
    with running(app) as base_url:
        yield base_url, model, tokenizer


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0], api_key=KEY, max_retries=0, timeout=60)


def greedy(model, tokenizer, prompt: str, max_new_tokens: int = MAX_TOKENS) -> tuple[str, int, int]:
    """transformers' greedy reply to a rendered prompt: (text, prompt tokens, generated tokens)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), ids["input_ids"].shape[1], len(new)


@pytest.fixture(scope="module")
def expected(served):
    _, model, tokenizer = served
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    text, prompt_tokens, new_tokens = greedy(model, tokenizer, prompt)
    # The reply must not open a think or tool-call block, or it would not all be `content`.
    assert text.strip() and "<think>" not in text and "<tool_call>" not in text
    return text, prompt_tokens, new_tokens


def collect(stream) -> dict:
    """Concatenated deltas of an `openai` chat stream, its finish reason and usage."""
    out = {"content": "", "reasoning_content": "", "tool_calls": [], "finish_reason": None, "usage": None}
    for chunk in stream:
        if chunk.usage:
            out["usage"] = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning_content"] += getattr(delta, "reasoning_content", None) or ""
            out["tool_calls"] += delta.tool_calls or []
            out["finish_reason"] = choice.finish_reason or out["finish_reason"]
    return out


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_greedy_reply_equals_generate_streamed_or_not(client, expected):
    text, prompt_tokens, new_tokens = expected
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    choice = reply.choices[0]
    assert choice.message.content == text and choice.message.tool_calls is None
    assert choice.finish_reason == ("length" if new_tokens == MAX_TOKENS else "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, new_tokens)

    stream = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = collect(stream)
    assert streamed["content"] == text and not streamed["reasoning_content"]
    assert streamed["finish_reason"] == choice.finish_reason
    assert streamed["usage"].completion_tokens == new_tokens


def test_raw_stream_is_server_sent_events_ending_with_done(served):
    body = {"model": NAME, "messages": MESSAGES, "temperature": 0, "max_tokens": 4, "stream": True}
    response = httpx.post(f"{served[0]}/chat/completions", json=body, headers=auth(), timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_thinking_switch_changes_the_rendered_prompt(served, client):
    _, model, tokenizer = served
    auto, _ = render_prompt(tokenizer, {"messages": MESSAGES})
    assert auto.endswith("<|im_start|>assistant\n")
    on = auto + "<think>\n"
    for body in (
        {"enable_thinking": True},
        {"open_thinking": True},
        {"chat_template_kwargs": {"enable_thinking": True}},
    ):
        assert render_prompt(tokenizer, {"messages": MESSAGES, **body})[0] == on
    off = {"messages": MESSAGES, "chat_template_kwargs": {"open_thinking": False}, "enable_thinking": True}
    assert render_prompt(tokenizer, off)[0] == auto + "<think>\n\n</think>\n\n"  # chat_template_kwargs win

    # Thinking on: the template opened the think block, so the whole (unclosed) reply is reasoning.
    text, prompt_tokens, _ = greedy(model, tokenizer, on)
    stream = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    streamed = collect(stream)
    assert streamed["reasoning_content"] == text.strip("\n") and streamed["content"] == ""
    assert streamed["usage"].prompt_tokens == prompt_tokens
    message = (
        client.chat.completions.create(
            model=NAME, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, extra_body={"open_thinking": True}
        )
        .choices[0]
        .message
    )
    assert (message.reasoning_content, message.content) == (text.strip("\n"), "")


def test_tools_are_rendered(served, client):
    tokenizer = served[2]
    prompt, parse_tools = render_prompt(tokenizer, {"messages": MESSAGES, "tools": [WEATHER]})
    assert parse_tools and "<tools>\n" + json.dumps(WEATHER) in prompt and "Be brief.\n\n# Tools" in prompt
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, tools=[WEATHER], temperature=0, max_tokens=2)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False).input_ids)
    # A history with a tool call and its result renders through the template (arguments as the client sends them).
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    prompt, _ = render_prompt(tokenizer, {"messages": history, "tools": [WEATHER]})
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert not render_prompt(tokenizer, {"messages": MESSAGES, "tools": [WEATHER], "tool_choice": "none"})[1]


def test_sampling_is_seeded(client):
    def sample(seed):
        reply = client.chat.completions.create(
            model=NAME, messages=MESSAGES, temperature=1.5, top_p=1.0, seed=seed, max_tokens=8
        )
        return reply.choices[0].message.content

    first = sample(1)
    assert first == sample(1) and first != sample(2)


def test_stop_strings_cut_the_reply(client, expected):
    text = expected[0]
    stop = text.strip()[3:5]  # a span from inside the reply: it ends where the span first occurs
    kwargs = {"model": NAME, "messages": MESSAGES, "temperature": 0, "max_tokens": MAX_TOKENS, "stop": [stop]}
    reply = client.chat.completions.create(**kwargs)
    assert reply.choices[0].message.content == text[: text.find(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = collect(client.chat.completions.create(**kwargs, stream=True))
    assert streamed["content"] == text[: text.find(stop)] and streamed["finish_reason"] == "stop"


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CUT_CALL = '<tool_call>\n{"name": "get_weather", "argu'
BAD_CALL = "<tool_call>\nnot json\n</tool_call>"
AUTO, THINK_ON = "<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n"


@pytest.mark.parametrize(
    "prompt, text, tools, reasoning, content, calls",
    [
        (AUTO, "<think>\nplan\n</think>\n\nParis is sunny.", False, "plan", "Paris is sunny.", []),
        (THINK_ON, "plan\n</think>\n\nParis is sunny.", False, "plan", "Paris is sunny.", []),
        (THINK_ON, "still thinking", False, "still thinking", "", []),  # cut off inside the think block
        (AUTO, "\n\nplain <think> later", False, None, "\n\nplain <think> later", []),  # not at the start: content
        (AUTO, f"Let me check.\n{CALL}", True, None, "Let me check.", ["Paris"]),
        (THINK_ON, f"need weather\n</think>\n\n{CALL}\n{CALL}", True, "need weather", "", ["Paris", "Paris"]),
        (AUTO, f"{BAD_CALL}\n{CALL}", True, None, BAD_CALL, ["Paris"]),  # a block that does not parse stays
        (AUTO, f"Checking.\n{CUT_CALL}", True, None, f"Checking.\n{CUT_CALL}", []),  # cut off: no call
        (AUTO, f"Let me check.\n{CALL}", False, None, f"Let me check.\n{CALL}", []),  # no tools offered
    ],
)
def test_reply_parsing_and_streamed_deltas(served, prompt, text, tools, reasoning, content, calls):
    reply = parse_reply(text, prompt, tools)
    assert (reply.reasoning, reply.content) == (reasoning, content)
    assert [call["arguments"]["city"] for call in reply.tool_calls] == calls
    message = serve.chat_message(reply)
    assert message.get("reasoning_content") == reasoning
    assert message["content"] == (content or (None if calls else ""))
    if calls:
        assert [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] == [{"city": "Paris"}] * len(
            calls
        )

    # Streamed token by token (as the tokenizer splits it), the deltas add up to the same message.
    tokenizer = served[2]
    stream, sent = ReplyStream(prompt, tools), {"reasoning_content": "", "content": ""}
    deltas = [d for token in tokenizer(text).input_ids for d in stream.feed(tokenizer.decode([token]))]
    deltas += stream.finish()
    streamed_calls = []
    for delta in deltas:
        streamed_calls += delta.pop("tool_calls", [])
        for key, piece in delta.items():
            sent[key] += piece
    assert sent == {"reasoning_content": reasoning or "", "content": content}
    assert [c["function"]["name"] for c in streamed_calls] == ["get_weather"] * len(calls)
    assert [c["index"] for c in streamed_calls] == list(range(len(calls)))


class ScriptedModel:
    """Stands in for a model that calls tools: `generate` streams and returns the tokens of a fixed reply."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, reply: str):
        self.config = tiny_config()
        self.script = torch.tensor(tokenizer(reply + "<|im_end|>", add_special_tokens=False).input_ids)

    def generate(self, input_ids, streamer=None, **kwargs):
        if streamer is not None:
            streamer.put(input_ids)
            for token in self.script:
                streamer.put(token[None])
            streamer.end()
        return torch.cat([input_ids, self.script[None]], dim=1)


def test_tool_calls_and_reasoning_reach_the_openai_client(served):
    tokenizer = served[2]
    model = ScriptedModel(tokenizer, f"<think>\nneed the weather\n</think>\n\nLet me check.\n{CALL}")
    with running(create_app(model, tokenizer, NAME)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        kwargs = {"model": NAME, "messages": MESSAGES, "tools": [WEATHER]}
        choice = client.chat.completions.create(**kwargs).choices[0]
        streamed = collect(client.chat.completions.create(**kwargs, stream=True))
    assert choice.finish_reason == streamed["finish_reason"] == "tool_calls"
    assert choice.message.reasoning_content == streamed["reasoning_content"] == "need the weather"
    assert choice.message.content == streamed["content"] == "Let me check."
    for call in (choice.message.tool_calls[0], streamed["tool_calls"][0]):
        assert (call.type, call.function.name) == ("function", "get_weather") and call.id.startswith("call_")
        assert json.loads(call.function.arguments) == {"city": "Paris"}


def auth(key=KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def body_with(**fields) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


@pytest.mark.parametrize(
    "request_kwargs, status, param",
    [
        ({"json": body_with(), "headers": {}}, 401, None),
        ({"json": body_with(), "headers": auth("wrong")}, 401, None),
        ({"content": b'{"model": "tiny-sft", "messages": [', "headers": auth()}, 400, None),
        ({"content": b"[" * 5000 + b"]" * 5000, "headers": auth()}, 400, None),
        ({"json": ["not", "an", "object"]}, 400, None),
        ({"json": body_with(model="gpt-4o")}, 404, "model"),
        ({"json": body_with(messages=[])}, 400, "messages"),
        ({"json": {"model": NAME}}, 400, "messages"),
        ({"json": body_with(messages=[{"role": "wizard", "content": "hi"}])}, 400, "messages[0].role"),
        ({"json": body_with(messages=[{"role": "user", "content": 3}])}, 400, "messages[0].content"),
        (
            {"json": body_with(messages=[{"role": "user", "content": [{"type": "image_url"}]}])},
            400,
            "messages[0].content",
        ),
        ({"json": body_with(max_tokens=LIMIT + 1)}, 400, "max_tokens"),
        ({"json": body_with(max_tokens=0)}, 400, "max_tokens"),
        ({"json": body_with(max_tokens="4")}, 400, "max_tokens"),
        ({"json": body_with(temperature=-1)}, 400, "temperature"),
        ({"json": body_with(n=2)}, 400, "n"),
        ({"json": body_with(stream="yes")}, 400, "stream"),
        ({"json": body_with(stop=["a"] * 5)}, 400, "stop"),
        ({"json": body_with(tools=[{"type": "function"}])}, 400, "tools[0]"),
        ({"json": body_with(tool_choice="required", tools=[WEATHER])}, 400, "tool_choice"),
        ({"json": body_with(chat_template_kwargs={"chat_template": "{{ 7 }}"})}, 400, "chat_template_kwargs"),
        ({"json": body_with(enable_thinking="on")}, 400, "enable_thinking"),
        ({"json": body_with(messages=[{"role": "user", "content": "你" * 1100}])}, 400, "messages"),  # > context
        ({"content": b"x" * (MAX_BYTES + 1), "headers": auth()}, 413, None),
        ({"content": iter([b"{", b" " * MAX_BYTES, b"}"]), "headers": auth()}, 413, None),  # chunked, no length
    ],
)
def test_bad_requests_get_openai_errors(served, request_kwargs, status, param):
    request_kwargs = {"headers": auth(), **request_kwargs}
    response = httpx.post(f"{served[0]}/chat/completions", timeout=30, **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_routes_and_the_openai_client_errors(served, client):
    base = served[0]
    for response, status in (
        (httpx.get(f"{base}/nope", headers=auth()), 404),
        (httpx.get(f"{base}/chat/completions"), 405),
    ):
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=LIMIT + 1)
    # The server still answers after all the bad requests.
    assert client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2).usage.completion_tokens


def test_client_leaving_mid_stream_stops_generation_and_frees_the_server(served, client, caplog):
    body = {"model": NAME, "messages": MESSAGES, "temperature": 0, "max_tokens": LIMIT, "stream": True}
    with caplog.at_level(logging.INFO, logger="minimind_hf.serve"):
        with httpx.stream("POST", f"{served[0]}/chat/completions", json=body, headers=auth(), timeout=60) as response:
            data = (line for line in response.iter_lines() if line.startswith("data: "))
            assert [json.loads(next(data).removeprefix("data: ")) for _ in range(3)]
        # Leaving the block closed the connection. The next request waits for the server's one generation slot.
        start = time.time()
        reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
        assert reply.usage.completion_tokens and time.time() - start < 30
    stopped = [r.getMessage() for r in caplog.records if "client disconnected" in r.getMessage()]
    assert len(stopped) == 1 and int(stopped[0].split()[3]) < LIMIT, stopped


def test_command_line_binds_loopback_and_serves_the_folder(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    tiny_model().save_pretrained(tmp_path / "sft")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    serve.main(["--model", str(tmp_path / "sft"), "--api-key", KEY])
    assert (started["host"], started["port"]) == ("127.0.0.1", 8000)
    with TestClient(started["app"]) as test_client:
        assert test_client.get("/v1/models").status_code == 401
        assert test_client.get("/v1/models", headers=auth()).json()["data"][0]["id"] == "sft"
