"""The web chat (minimind_hf/webchat.py): its glue (Gradio history to OpenAI messages and back, streamed chunks to UI
messages with thinking and tool blocks, the demo-tool loop) without a browser; and, marked `browser`, the whole chat in
a headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) against a tiny model served
in-process: the reply read from the page equals the server's greedy reply, the thinking block is collapsed, and the
page is saved (to docs/webchat.png with `MINIMIND_HF_WEBCHAT_SCREENSHOT=docs/webchat.png`)."""

import json
import os
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
openai = pytest.importorskip("openai")

from openai.types.chat import ChatCompletionChunk  # noqa: E402

from minimind_hf import webchat  # noqa: E402  (needs gradio)
from minimind_hf.webchat import THINKING, TOOL, Round, add_delta, to_openai, ui_messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def part(text: str) -> list[dict]:
    """Message content as Gradio 6 hands the history to the chat function: a list of text parts."""
    return [{"type": "text", "text": text}]


def test_history_becomes_openai_messages():
    history = [
        {"role": "user", "content": part("Hi"), "metadata": None},
        {"role": "assistant", "content": part("only thought"), "metadata": {"title": THINKING, "status": "done"}},
        {"role": "user", "content": "What is 2*3?"},  # plain strings are accepted too
        {"role": "assistant", "content": part("use the tool"), "metadata": {"title": THINKING}},
        {"role": "assistant", "content": part("6"), "metadata": {"title": TOOL + "calculate", "log": '{"e": "2*3"}'}},
        {"role": "assistant", "content": part("It is 6."), "metadata": {}},
    ]
    call = {"id": "call_4", "type": "function", "function": {"name": "calculate", "arguments": '{"e": "2*3"}'}}
    assert to_openai(history, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "reasoning_content": "only thought"},
        {"role": "user", "content": "What is 2*3?"},
        {"role": "assistant", "content": "", "reasoning_content": "use the tool", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_4", "content": "6"},
        {"role": "assistant", "content": "It is 6."},
    ]
    assert to_openai([], None) == [] and to_openai([], "  ") == []


def test_streamed_deltas_become_ui_messages():
    step = Round()
    add_delta(step, {"role": "assistant", "content": ""})
    assert ui_messages([step]) == [{"role": "assistant", "content": ""}]  # an empty bubble, not an empty turn
    add_delta(step, {"reasoning_content": "let me "})
    add_delta(step, {"reasoning": "think"})  # ollama's field name
    assert ui_messages([step]) == [
        {"role": "assistant", "content": "let me think", "metadata": {"title": THINKING, "status": "pending"}}
    ]
    add_delta(step, {"content": "Paris"})
    add_delta(step, {"content": " is sunny."})
    # Tool calls stream by index: id and name first, the arguments in pieces (a server may send them whole).
    add_delta(step, {"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "get_weather", "arguments": ""}}]})
    add_delta(step, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]})
    add_delta(step, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
    add_delta(step, {"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "t", "arguments": {"a": 1}}}]})
    assert step.tool_calls == [
        {"id": "c0", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "c1", "name": "t", "arguments": '{"a": 1}'},
    ]
    step.results.append("sunny")
    shown = ui_messages([step])
    assert shown[0]["metadata"] == {"title": THINKING, "status": "done"}  # closed once the answer starts
    assert shown[1] == {"role": "assistant", "content": "Paris is sunny."}
    assert shown[2]["content"] == "sunny"
    assert shown[2]["metadata"] == {"title": TOOL + "get_weather", "log": '{"city": "Paris"}', "status": "done"}
    assert shown[3]["content"] == "" and shown[3]["metadata"]["status"] == "pending"  # no result yet


def test_request_options():
    assert webchat.request_options(0, 0.9, 12.0, "auto", False) == {"temperature": 0, "top_p": 0.9, "max_tokens": 12}
    off = webchat.request_options(0.7, 1, 5, "off", True)
    assert off["extra_body"] == {"enable_thinking": False, "chat_template_kwargs": {"enable_thinking": False}}
    assert [tool["function"]["name"] for tool in off["tools"]] == ["calculate", "current_time"]


def test_demo_tools():
    assert webchat.run_tool("calculate", '{"expression": "2 * (3 + 4) - 1 / 4"}') == "13.75"
    assert webchat.run_tool("calculate", '{"expression": "__import__(\'os\')"}').startswith("error: ValueError")
    assert webchat.run_tool("calculate", '{"expression": "2 ** 99999999"}').startswith("error: ValueError")
    assert webchat.run_tool("nope", "{}") == "error: KeyError: 'nope'"
    assert webchat.run_tool("current_time", '{"utc_offset_hours": 8}').endswith("+08:00")


def chunks(*deltas: dict) -> list[ChatCompletionChunk]:
    return [
        ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        )
        for delta in deltas
    ]


class ScriptedClient:
    """Stands in for `openai.OpenAI`: each `chat.completions.create` streams the next scripted reply."""

    base_url = "http://scripted/v1"

    def __init__(self, *replies: list[ChatCompletionChunk]):
        self.replies, self.requests = list(replies), []
        self.chat = self.completions = self

    def create(self, **request):
        self.requests.append(request)
        return iter(self.replies.pop(0))


def test_tool_calls_run_and_the_reply_continues_with_their_results():
    call = {"index": 0, "id": "c0", "type": "function", "function": {"name": "calculate", "arguments": ""}}
    arguments = {"index": 0, "function": {"arguments": '{"expression": "6*7"}'}}
    client = ScriptedClient(
        chunks({"reasoning_content": "need math"}, {"tool_calls": [call]}, {"tool_calls": [arguments]}),
        chunks({"content": "It is "}, {"content": "42."}),
    )
    options = webchat.request_options(0, 1, 20, "on", True)
    turns = list(webchat.respond(client, "m", [{"role": "user", "content": "6*7?"}], options))
    assert [message["content"] for message in turns[-1]] == ["need math", "42", "It is 42."]
    assert turns[-1][1]["metadata"] == {"title": TOOL + "calculate", "log": '{"expression": "6*7"}', "status": "done"}
    # The second request carries the call and its result; both carry the settings.
    assert client.requests[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c0",
                    "type": "function",
                    "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "42"},
    ]
    assert all(r["stream"] and r["extra_body"]["enable_thinking"] and r["tools"] for r in client.requests)
    # The UI's history of that turn turns back into the same conversation.
    assert [m["role"] for m in to_openai([{"role": "user", "content": "6*7?"}, *turns[-1]])] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


def test_ui_builds():
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")
    assert isinstance(webchat.build_ui(client, "m", temperature=0), gr.ChatInterface)


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,820",
]
NAME, MAX_TOKENS, TOP_P = "tiny-sft", 12, 0.9


@pytest.fixture(scope="module")
def webchat_page(tmp_path_factory):
    """(openai client of the model server, URL of the web chat): a briefly trained tiny model served in-process, the
    web chat at temperature 0 pointing at it."""
    from minimind_hf.chat import load_model_and_tokenizer
    from minimind_hf.serve import create_app, serve_in_thread
    from minimind_hf.tokenization import load_tokenizer
    from tests.utils import briefly_trained, tiny_model

    folder = tmp_path_factory.mktemp("webchat") / "sft"
    briefly_trained(tiny_model()).save_pretrained(folder)  # near-tied logits would make greedy replies flaky
    load_tokenizer().save_pretrained(folder)
    model, tokenizer = load_model_and_tokenizer(folder)
    base_url, stop = serve_in_thread(create_app(model, tokenizer, NAME))
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    ui = webchat.build_ui(client, NAME, temperature=0, top_p=TOP_P, max_tokens=MAX_TOKENS)
    _, page, _ = ui.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield client, page
    finally:
        ui.close()
        stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), "apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    # The driver's path given: Selenium Manager does not run, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def normalized(text: str) -> str:
    return " ".join(text.split())


def wait_for(condition, timeout: float = 60, what: str = "the page"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if value := condition():
                return value
        except Exception:  # the page re-renders while streaming: elements go stale between look-ups
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def send_and_wait(driver, text: str, turn: int):
    """Types `text`, sends it with Enter, waits for the `turn`-th reply to finish streaming; returns its element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.CSS_SELECTOR, "textarea").send_keys(text, Keys.ENTER)
    rows = lambda: driver.find_elements(By.CSS_SELECTOR, ".bot-row")  # noqa: E731
    # Finished: the stop button (shown while a reply streams) is gone and the reply's text stopped changing.
    wait_for(lambda: len(rows()) == turn, what="the reply to start")
    stop_buttons = lambda: driver.find_elements(By.CSS_SELECTOR, "button.stop-button")  # noqa: E731
    wait_for(lambda: not any(button.is_displayed() for button in stop_buttons()), what="the reply to end")
    seen = []
    wait_for(lambda: seen.append(rows()[-1].text) or seen[-3:] == [seen[-1]] * 3, what="the reply to settle")
    return rows()[-1].find_element(By.CSS_SELECTOR, "[data-testid=bot]")


@pytest.mark.browser
def test_chat_in_chromium(webchat_page, browser, tmp_path):
    from selenium.webdriver.common.by import By

    client, page = webchat_page
    browser.get(page)
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "textarea").is_displayed(), what="the chat to load")
    settings = browser.find_element(By.XPATH, "//button[.//*[normalize-space()='Settings']] | //*[text()='Settings']")
    settings.click()
    # The accordion renders its content after the click: wait for the switch rather than find it at once.
    on = By.CSS_SELECTOR, "[data-testid=on-radio-label]"
    wait_for(lambda: browser.find_element(*on).is_displayed(), 10, "the settings to open")
    browser.find_element(*on).click()

    # Thinking on: the tiny model does not close the think block, so the whole reply is reasoning.
    first = [{"role": "user", "content": "你好"}]
    expected = client.chat.completions.create(
        model=NAME,
        messages=first,
        temperature=0,
        top_p=TOP_P,
        max_tokens=MAX_TOKENS,
        extra_body={"enable_thinking": True},
    )
    reasoning = expected.choices[0].message.reasoning_content
    assert reasoning and not expected.choices[0].message.content
    reply = send_and_wait(browser, "你好", turn=1)
    title = reply.find_element(By.CSS_SELECTOR, ".thought-group .title")
    assert normalized(title.text) == THINKING and normalized(reply.text) == THINKING  # collapsed: the title only
    title.click()
    wait_for(lambda: normalized(reply.text) == normalized(f"{THINKING} {reasoning}"), 10, "the thinking to open")
    title.click()
    wait_for(lambda: normalized(reply.text) == THINKING, 10, "the thinking to close")

    # Thinking off, second turn: the request carries the first turn (its reasoning as `reasoning_content`).
    browser.find_element(By.CSS_SELECTOR, "[data-testid=off-radio-label]").click()
    history = [*first, {"role": "assistant", "content": "", "reasoning_content": reasoning}]
    expected = client.chat.completions.create(
        model=NAME,
        messages=[*history, {"role": "user", "content": "Who are you?"}],
        temperature=0,
        top_p=TOP_P,
        max_tokens=MAX_TOKENS,
        extra_body={"enable_thinking": False},
    )
    answer = expected.choices[0].message.content
    assert answer.strip() and not getattr(expected.choices[0].message, "reasoning_content", None)
    reply = send_and_wait(browser, "Who are you?", turn=2)
    assert normalized(reply.text) == normalized(answer)

    settings.click()
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)  # the accordion's closing animation
    # CI leaves the checkout clean; `MINIMIND_HF_WEBCHAT_SCREENSHOT=docs/webchat.png` refreshes the README's picture.
    shot = os.environ.get("MINIMIND_HF_WEBCHAT_SCREENSHOT") or str(tmp_path / "webchat.png")
    assert browser.save_screenshot(shot)
    print(json.dumps({"reasoning": reasoning, "answer": answer}, ensure_ascii=False))
