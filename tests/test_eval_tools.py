"""The tool-use evaluation: `run_tool` turns failures and hangs into `error: ...` text on time, the agent loop scores
scripted turns by hand, a tiny model trained in process to call the calculator and then answer succeeds through the
local backend and through our own server, and the report prints its table and writes its JSON."""

import json
import socket
import time

import pytest

from minimind_hf.curriculum import calculator, convert_units, tool_schemas
from minimind_hf.eval_tools import (
    MALFORMED,
    EndpointBackend,
    EndpointError,
    LocalBackend,
    ToolTask,
    format_table,
    load_tool_tasks,
    main,
    run_agent,
    run_tool,
    split_turn,
    tool_use_report,
    write_json,
)
from minimind_hf.tokenization import load_tokenizer
from tests.utils import memorised_replies

TOOLS = {"calculator": calculator, "convert_units": convert_units}
SCHEMAS = tool_schemas({"calculator": calculator})  # the trained model sees one schema: a shorter prompt
SYSTEM = {"role": "system", "content": "You can use tools to answer."}
TASK = ToolTask(
    [SYSTEM, {"role": "user", "content": "Please calculate 41 + 69."}],
    SCHEMAS,
    {"name": "calculator", "arguments": {"expression": "41 + 69"}},
    "110",
    "en",
)
UNITS = ToolTask(
    [SYSTEM, {"role": "user", "content": "How many m is 3 km?"}],
    tool_schemas(TOOLS),
    {"name": "convert_units", "arguments": {"value": 3, "from_unit": "km", "to_unit": "m"}},
    "3000",
    "en",
)
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "41 + 69"}}\n</tool_call>'
FINAL = "41 + 69 = 110."


class Scripted:
    """A backend that answers every conversation of round `i` with `turns[i]` (the last one after that) and keeps
    what it was asked."""

    def __init__(self, *turns):
        self.turns, self.asked = turns, []

    def __call__(self, conversations, tools, temperature=None, seed=None):
        self.asked.append({"conversations": [list(c) for c in conversations], "tools": list(tools)})
        turn = self.turns[min(len(self.asked), len(self.turns)) - 1]
        return [turn(c) if callable(turn) else turn for c in conversations]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- run_tool ----------------------------------------------------------------------------------------------------


def test_run_tool_turns_failures_into_error_text():
    def boom(x: int) -> str:
        raise RuntimeError("boom")

    def silent() -> str:
        raise KeyError

    tools = {**TOOLS, "boom": boom, "silent": silent, "number": lambda: 42}
    assert run_tool(tools, "calculator", {"expression": "41 + 69"}) == "110"
    assert run_tool(tools, "boom", {"x": 1}) == "error: boom"
    assert run_tool(tools, "silent", {}) == "error: KeyError"
    assert run_tool(tools, "weather", {"city": "Paris"}) == "error: unknown tool weather"
    assert run_tool(tools, "calculator", {"expr": "1"}).startswith("error: ")  # unexpected keyword
    assert run_tool(tools, "calculator", {}).startswith("error: ")  # missing argument
    assert run_tool(tools, "calculator", ["1 + 1"]) == "error: arguments must be a JSON object"
    assert run_tool(tools, "number", {}) == "42"  # a non-string result is sent as JSON text


def test_run_tool_abandons_a_hanging_tool_on_time():
    def hang(seconds: float) -> str:
        time.sleep(seconds)
        return "late"

    start = time.perf_counter()
    result = run_tool({"hang": hang}, "hang", {"seconds": 5}, timeout_s=0.2)
    assert time.perf_counter() - start < 0.7
    assert result == "error: hang timed out after 0.2 s"
    assert run_tool({"hang": hang}, "hang", {"seconds": 0.01}, timeout_s=1.0) == "late"


# --- the loop on scripted turns ----------------------------------------------------------------------------------

OPENAI_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "41 + 69"}'}}
    ],
}


def test_split_turn_text_and_message():
    assert split_turn(f"Let me see.\n{CALL}<|im_end|>ignored") == (
        "Let me see.",
        [{"name": "calculator", "arguments": {"expression": "41 + 69"}}],
    )
    assert split_turn(OPENAI_CALL) == ("", [{"name": "calculator", "arguments": {"expression": "41 + 69"}}])
    broken = '<tool_call>{"name": calculator}</tool_call>'
    assert split_turn(broken) == (broken, [None])
    assert split_turn("<tool_call>\n{") == ("<tool_call>\n{", [None])  # cut off: never run
    assert split_turn("110") == ("110", [])


@pytest.mark.parametrize("first", [CALL, OPENAI_CALL], ids=["text", "openai_message"])
def test_loop_runs_the_call_and_scores_a_success(first):
    backend = Scripted(first, FINAL)
    (result,) = run_agent(backend, [TASK], TOOLS)
    assert {k: result[k] for k in ("called", "right_tool", "valid_arguments", "success", "rounds")} == {
        "called": 1.0,
        "right_tool": 1.0,
        "valid_arguments": 1.0,
        "success": 1.0,
        "rounds": 2.0,
    }
    assert result["final"] == FINAL and result["tool"] == "calculator"
    # The second round sees the call as a structured assistant turn and the tool's real result.
    second = backend.asked[1]["conversations"][0]
    assert second[:2] == TASK.messages and backend.asked[1]["tools"] == [SCHEMAS]
    assert second[2]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": '{"expression": "41 + 69"}'}
    assert second[3] == {"role": "tool", "tool_call_id": "call_0_0", "content": "110"}
    assert result["messages"] == [*second, {"role": "assistant", "content": FINAL}]


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.mark.parametrize(
    "turns, scores, tool_reply",
    [
        # right tool, wrong expression: the tool answers 137, the (scripted) model still says 110
        ((call("calculator", {"expression": "41 + 96"}), FINAL), (1, 1, 0, 1, 2), "137"),
        # an argument the tool does not take: the call is not the expected one and the tool answers an error
        ((call("calculator", {"expression": "41 + 69", "x": 1}), FINAL), (1, 1, 0, 1, 2), None),
        ((call("lookup", {"entity": "41", "attribute": "age"}), "I don't know."), (1, 0, 0, 0, 2), None),
        (("110",), (0, 0, 0, 1, 1), None),
        (('<tool_call>{"name": calculator}</tool_call>', FINAL), (0, 0, 0, 1, 2), MALFORMED),
    ],
    ids=["wrong_arguments", "extra_argument", "wrong_tool", "no_call", "malformed_call"],
)
def test_loop_scores_by_hand(turns, scores, tool_reply):
    (result,) = run_agent(Scripted(*turns), [TASK], TOOLS)
    names = ("called", "right_tool", "valid_arguments", "success", "rounds")
    assert tuple(result[k] for k in names) == tuple(float(s) for s in scores)
    responses = [m["content"] for m in result["messages"] if m["role"] == "tool"]
    if tool_reply is not None:
        assert responses == [tool_reply]
    elif result["rounds"] == 2:
        assert len(responses) == 1 and responses[0].startswith("error: ")


@pytest.mark.parametrize("max_rounds", [1, 2, 3])
def test_loop_stops_at_max_rounds(max_rounds):
    backend = Scripted(CALL)  # calls the calculator every turn
    (result,) = run_agent(backend, [TASK], TOOLS, max_rounds=max_rounds)
    assert result["rounds"] == len(backend.asked) == max_rounds
    assert result["success"] == 0.0 and result["valid_arguments"] == 1.0
    roles = [m["role"] for m in result["messages"][2:]]
    assert roles == ["assistant", "tool"] * (max_rounds - 1) + ["assistant"]  # the last turn's call is not run


def test_tasks_finish_independently_and_no_tools_baseline():
    backend = Scripted(
        lambda c: "110" if "41" in c[-1]["content"] else call("convert_units", UNITS.expected_call["arguments"]),
        "3 km is 3000",
    )
    results = run_agent(backend, [TASK, UNITS], TOOLS)
    assert [r["rounds"] for r in results] == [1.0, 2.0] and [r["success"] for r in results] == [1.0, 1.0]
    assert len(backend.asked[1]["conversations"]) == 1  # the finished task is not asked again
    assert results[1]["messages"][3]["content"] == "3000"

    baseline = Scripted(CALL)
    (result,) = run_agent(baseline, [TASK], TOOLS, use_tools=False)
    assert baseline.asked == [{"conversations": [[TASK.messages[1]]], "tools": [None]}]
    assert result["rounds"] == 1.0 and result["called"] == 1.0 and result["success"] == 0.0
    assert not any(m["role"] == "tool" for m in result["messages"])


def test_report_table_and_json(tmp_path):
    def turns(conversation):  # right on the calculator, a wrong unit on the converter, then a final answer
        if conversation[-1]["role"] == "tool":
            return f"= {conversation[-1]['content']}"
        if "41" in conversation[-1]["content"]:
            return CALL
        return call("convert_units", {"value": 3, "from_unit": "km", "to_unit": "cm"})

    report = tool_use_report(Scripted(turns), [TASK, TASK, UNITS], TOOLS, seeds=[0, 1], no_tools=True)
    assert report["n"] == 3
    greedy = report["greedy"]
    assert list(greedy) == ["calculator", "convert_units", "all"]
    assert greedy["calculator"] == {
        "n": 2,
        "called": 1.0,
        "right_tool": 1.0,
        "valid_arguments": 1.0,
        "success": 1.0,
        "rounds": 2.0,
    }
    assert greedy["convert_units"]["right_tool"] == 1.0 and greedy["convert_units"]["valid_arguments"] == 0.0
    assert greedy["convert_units"]["success"] == 0.0  # the tool said 300000
    assert greedy["all"]["success"] == pytest.approx(2 / 3)
    sampled = report["sampled"]
    assert sampled["seeds"] == [0, 1] and sampled["temperature"] == 0.8
    assert sampled["groups"]["all"]["success"] == {
        "mean": pytest.approx(2 / 3),
        "min": pytest.approx(2 / 3),
        "max": pytest.approx(2 / 3),
        "per_seed": [pytest.approx(2 / 3)] * 2,
    }
    assert report["no_tools"]["all"]["rounds"] == 1.0

    table = format_table(report).splitlines()
    assert table[0] == "| run | tool | n | called | right tool | valid arguments | success | rounds |"
    assert "| greedy | calculator | 2 | 1.00 | 1.00 | 1.00 | 1.00 | 2.00 |" in table
    assert "| greedy | all | 3 | 1.00 | 1.00 | 0.67 | 0.67 | 2.00 |" in table
    assert any(line.startswith("| no tools (greedy) | all | 3 |") for line in table)
    assert "| sampled T=0.8, seeds 0 1 | all | 3 | 1.00 [1.00, 1.00] |" in "\n".join(table)
    assert len(table) == 2 + 3 * 3

    path = tmp_path / "out" / "tools.json"
    write_json(path, report)
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert [p.name for p in path.parent.iterdir()] == ["tools.json"]  # no temporary file left


# --- the curriculum tasks and the command line -------------------------------------------------------------------


def test_curriculum_tasks(tmp_path):
    from minimind_hf.curriculum import build_world, ensure_curriculum, make_tools

    path = ensure_curriculum(seed=0)["tools"]["eval"]
    tasks = load_tool_tasks(path)
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    pairs = [r for r in records if r["task"] == "tool_call"]
    assert len(tasks) == len(pairs) > 0 and {t.tool for t in tasks} == {"calculator", "convert_units", "lookup"}
    tools = make_tools(build_world(0))
    for task, pair in zip(tasks, pairs):
        assert [m["role"] for m in task.messages] == ["system", "user"] and task.tools
        assert task.expected_call == pair["tool_call"]
        # The expected call, run, gives the expected answer: the tasks are solvable with the bound tools.
        assert run_tool(tools, task.tool, task.expected_call["arguments"]) == task.answer


def test_cli_on_a_model_folder(saved_tiny, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["--model", str(saved_tiny), "--limit", "4", "--max_new_tokens", "8", "--output", str(out)]
    report = main([*argv, "--seeds", "0", "1", "--no_tools", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "| run | tool | n |" in printed and "| greedy | all | 4 |" in printed
    assert "| sampled T=0.8, seeds 0 1 | all | 4 |" in printed and "| no tools (greedy) | all | 4 |" in printed
    saved = json.loads(out.read_text())
    assert saved["n"] == 4 and saved["model"] == str(saved_tiny) and saved["greedy"] == report["greedy"]
    assert set(saved) >= {"greedy", "sampled", "no_tools", "curriculum_seed", "max_rounds"}


def test_cli_errors_name_the_input(tmp_path):
    with pytest.raises(SystemExit, match=f"eval_tools: {tmp_path / 'missing'} is not a model folder"):
        main(["--model", str(tmp_path / "missing")])
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SystemExit, match=f"eval_tools: cannot reach {url}/models"):
        main(["--base_url", url])
    with pytest.raises(EndpointError, match="cannot reach"):
        EndpointBackend(url, "minimind")


# --- a tiny model that uses the calculator -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def calculator_model():
    """(model, tokenizer): the tiny dense model trained for a few CPU seconds to answer TASK's prompt with CALL and,
    once the tool said 110, with FINAL; the prompts are the ones the loop renders (captured from a scripted run)."""
    tokenizer = load_tokenizer()
    backend = Scripted(CALL, FINAL)
    run_agent(backend, [TASK], TOOLS)
    examples = [
        (
            tokenizer.apply_chat_template(
                asked["conversations"][0], tools=SCHEMAS, add_generation_prompt=True, tokenize=False
            ),
            reply,
        )
        for asked, reply in zip(backend.asked, (CALL, FINAL))
    ]
    model = memorised_replies(tokenizer, examples, steps=120)
    return model, tokenizer


def test_trained_model_calls_the_calculator_and_answers(calculator_model):
    (result,) = run_agent(LocalBackend(*calculator_model, max_new_tokens=40), [TASK], TOOLS)
    assert result["messages"][2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert result["messages"][3]["content"] == "110"  # the tool ran
    assert result["final"] == FINAL
    assert (result["valid_arguments"], result["success"], result["rounds"]) == (1.0, 1.0, 2.0)


def test_endpoint_backend_against_our_server(calculator_model):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from minimind_hf.serve import create_app, serve_in_thread

    model, tokenizer = calculator_model
    base_url, stop = serve_in_thread(create_app(model, tokenizer, "calc", api_key="key"))
    try:
        backend = EndpointBackend(base_url, api_key="key", max_tokens=40)
        assert backend.model_name == "calc"  # the first model /v1/models lists
        (result,) = run_agent(backend, [TASK], TOOLS)
        with pytest.raises(EndpointError, match="HTTP 401"):
            EndpointBackend(base_url, api_key="wrong")
    finally:
        stop()
    (local,) = run_agent(LocalBackend(model, tokenizer, max_new_tokens=40), [TASK], TOOLS)
    assert result["final"] == local["final"] == FINAL
    assert (result["valid_arguments"], result["success"], result["rounds"]) == (1.0, 1.0, 2.0)
    assert result["messages"][3]["content"] == "110"
