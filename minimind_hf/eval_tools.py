"""Tool-use evaluation: a model answers the curriculum's held-out tool questions in a multi-turn agent loop that runs
the tools it calls, scored per tool (what upstream MiniMind's `scripts/eval_toolcall.py` measures).

    python -m minimind_hf.eval_tools --model outputs/quickstart/sft --curriculum_seed 0
    python -m minimind_hf.eval_tools --model outputs/quickstart/sft --no_tools --seeds 0 1 2 --temperature 0.8
    python -m minimind_hf.eval_tools --base_url http://127.0.0.1:8000/v1 --model_name minimind --output tools.json

Each task is a held-out `tool_answer` dialogue's opening (system prompt with the tool schemas + user question). The
loop generates an assistant turn, parses its `<tool_call>` blocks (or an endpoint's `tool_calls`), runs each call with
[`run_tool`] (time-limited; failures come back as `error: ...` text the model reads), appends the assistant turn and
the `tool` messages, and generates again, until a turn calls no tool or `max_rounds` turns were generated.

Scores per task: `called` (at least one well-formed call), `right_tool` (the first well-formed call names the
expected tool), `valid_arguments` (that call passes the `tool_call` scorer: right name, arguments equal the expected
ones, strings normalised and numbers by value), `success` (the final turn passes the short-answer scorer against the
expected answer) and `rounds` (turns generated). `--no_tools` adds a baseline run on the same questions with no tools
offered (user turn only, one turn), so the effect of the tools is visible. `--seeds` adds sampled runs at
`--temperature`, reported as mean / min / max over seeds, like [`minimind_hf.rl.reward_report`].

Backends share one interface (conversations and their tool schemas in, assistant turns out): a local model folder
([`LocalBackend`], transformers `generate`, batched over tasks) or any OpenAI-compatible endpoint ([`EndpointBackend`],
standard-library HTTP; `minimind-serve`, vLLM, llama-server, ...).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import conversation_to_messages
from .evaluation import make_generate_fn, score_short_answer, score_tool_call
from .rewards import _TOOL_CALL_BLOCK
from .rewards import tool_calls as parse_calls
from .training import write_json

METRICS = ("called", "right_tool", "valid_arguments", "success", "rounds")
TOOL_NAMES = ("calculator", "convert_units", "lookup")
MALFORMED = 'error: malformed tool call (expected <tool_call>{"name": ..., "arguments": {...}}</tool_call>)'

# A backend: `(conversations, tools, temperature=None, seed=None) -> turns`, one assistant turn per conversation, each
# the generated text (`<tool_call>` blocks inline) or an OpenAI assistant message (`content`, `tool_calls`).
# `tools[i]` is conversation i's schema list or `None`; temperature `None` means greedy.
Backend = Callable[..., list]


def run_tool(tools: dict[str, Callable[..., str]], name: str, arguments: dict, timeout_s: float = 1.0) -> str:
    """Runs one tool call in a worker thread with a time limit and returns its result as text.

    Never raises: an unknown tool, arguments that are not an object or do not fit the function, an exception inside
    the tool and a tool still running after `timeout_s` seconds all give an `error: ...` string the model can read.
    A thread cannot be killed, so a tool that hangs is abandoned (a daemon thread) and the call returns on time.
    """
    if name not in tools:
        return f"error: unknown tool {name}"
    if not isinstance(arguments, dict):
        return "error: arguments must be a JSON object"
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = tools[name](**arguments)
        except Exception as error:  # noqa: BLE001  (any failure is reported to the model, never raised)
            outcome["error"] = error

    worker = threading.Thread(target=work, name=f"tool-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return f"error: {name} timed out after {timeout_s:g} s"
    if "error" in outcome:
        error = outcome["error"]
        return f"error: {error}" if str(error) else f"error: {type(error).__name__}"
    result = outcome.get("result")
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def time_limited(fn: Callable[..., str], timeout_s: float = 1.0) -> Callable[..., str]:
    """`fn` called through [`run_tool`] (time limit, failures as `error: ...` text), keeping its name, signature and
    docstring, from which transformers builds the tool's JSON schema: the form TRL's GRPO tool loop runs tools in."""

    @functools.wraps(fn)
    def call(**arguments) -> str:
        return run_tool({fn.__name__: fn}, fn.__name__, arguments, timeout_s)

    return call


@dataclass
class ToolTask:
    """One question: the opening messages (system with tools + user), the schemas offered, the call a right answer
    starts with (`{"name", "arguments"}`) and the expected final answer."""

    messages: list[dict]
    tools: list[dict]
    expected_call: dict
    answer: str
    lang: str = ""

    @property
    def tool(self) -> str:
        return self.expected_call["name"]


def load_tool_tasks(path: str | os.PathLike) -> list[ToolTask]:
    """The tasks of a curriculum tools evaluation file: one per `tool_answer` record, the expected call read from the
    dialogue's first assistant `tool_calls` (the `tool_call` records hold the same call)."""
    tasks = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("task") != "tool_answer":
                continue
            messages, tools = conversation_to_messages(record["conversations"])
            first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            call = parse_calls(messages[first : first + 1])[0]
            if call is None:
                raise ValueError(f"{path}: a tool_answer record without a well-formed expected call")
            tasks.append(ToolTask(messages[:first], json.loads(tools), call, str(record["answer"]), record["lang"]))
    return tasks


def curriculum_tasks_and_tools(seed: int = 0) -> tuple[list[ToolTask], dict[str, Callable[..., str]]]:
    """The held-out tool tasks of the curriculum for `seed` and its tools bound to that seed's world."""
    from .curriculum import build_world, ensure_curriculum, make_tools

    return load_tool_tasks(ensure_curriculum(seed=seed)["tools"]["eval"]), make_tools(build_world(seed))


def split_turn(turn: str | dict) -> tuple[str, list[dict | None]]:
    """(content without its well-formed `<tool_call>` blocks, every call in order: `{"name", "arguments"}`, or
    `None` for a block that does not parse or is cut off) of generated text or an OpenAI assistant message."""
    message = {"content": turn} if isinstance(turn, str) else turn
    text = (message.get("content") or "").split("<|im_end|>")[0]
    calls = parse_calls([{"role": "assistant", "content": text, "tool_calls": message.get("tool_calls")}])

    def drop(match) -> str:
        return "" if parse_calls(match.group(0))[0] is not None else match.group(0)

    content = _TOOL_CALL_BLOCK.sub(drop, text) if any(c is not None for c in calls) else text
    return content.strip(), calls


@dataclass
class _Episode:
    task: ToolTask
    messages: list[dict]
    tools: list[dict] | None
    calls: list[dict] = field(default_factory=list)
    final: str = ""
    rounds: int = 0
    done: bool = False


def run_agent(
    backend: Backend,
    tasks: Sequence[ToolTask],
    tools: dict[str, Callable[..., str]],
    *,
    max_rounds: int = 3,
    use_tools: bool = True,
    temperature: float | None = None,
    seed: int | None = None,
    timeout_s: float = 1.0,
) -> list[dict]:
    """Runs every task through the agent loop, all tasks in step (one backend call per round) and scores each.

    Without `use_tools` the tasks are asked with no tools offered (the user turn alone, one turn); calls the model
    writes anyway are counted but not run.

    Returns one dict per task: `tool`, `lang`, the scores (`called`, `right_tool`, `valid_arguments`, `success` as
    0.0/1.0, `rounds`), `final` (the last turn's content) and `messages` (the whole conversation).
    """
    episodes = []
    for task in tasks:
        if use_tools:
            episodes.append(_Episode(task, [dict(m) for m in task.messages], task.tools))
        else:
            episodes.append(_Episode(task, [dict(m) for m in task.messages if m["role"] == "user"], None))
    rounds = max_rounds if use_tools else 1
    for step in range(rounds):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        turns = backend([e.messages for e in active], [e.tools for e in active], temperature=temperature, seed=seed)
        if len(turns) != len(active):
            raise ValueError(f"the backend returned {len(turns)} turns for {len(active)} conversations")
        for episode, turn in zip(active, turns):
            content, calls = split_turn(turn)
            episode.rounds += 1
            episode.final = content
            episode.calls += [c for c in calls if c is not None]
            # Malformed blocks stay in the content; each gets an error response so the model can try again.
            ids = [f"call_{step}_{i}" for i in range(len(calls))]
            message = {"role": "assistant", "content": content}
            entries = [
                {"id": i, "type": "function", "function": {"name": c["name"], "arguments": _dumps(c["arguments"])}}
                for i, c in zip(ids, calls)
                if c is not None
            ]
            if entries:
                message["tool_calls"] = entries
            episode.messages.append(message)
            # The turn limit (or no tools offered): the turn's calls are recorded, not run.
            episode.done = not calls or not use_tools or step == rounds - 1
            if episode.done:
                continue
            for call_id, call in zip(ids, calls):
                if call is None:  # no `tool_calls` entry to answer: a bare tool message
                    episode.messages.append({"role": "tool", "content": MALFORMED})
                    continue
                result = run_tool(tools, call["name"], call["arguments"], timeout_s)
                episode.messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return [_score(e) for e in episodes]


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _score(episode: _Episode) -> dict:
    task, first = episode.task, (episode.calls[0] if episode.calls else None)
    as_text = f"<tool_call>{_dumps(first)}</tool_call>" if first else ""
    return {
        "tool": task.tool,
        "lang": task.lang,
        "called": float(first is not None),
        "right_tool": float(first is not None and first["name"] == task.tool),
        "valid_arguments": score_tool_call({"tool_call": task.expected_call}, as_text),
        "success": score_short_answer({"answer": task.answer}, episode.final),
        "rounds": float(episode.rounds),
        "final": episode.final,
        "messages": episode.messages,
    }


def summarize(results: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean of every metric per tool (in [`TOOL_NAMES`] order, then any other) and over all tasks (`"all"`), with the
    task count `n`."""
    groups: dict[str, list[dict]] = {name: [] for name in TOOL_NAMES}
    for result in results:
        groups.setdefault(result["tool"], []).append(result)
    groups["all"] = list(results)
    return {
        name: {"n": len(rows), **{m: sum(r[m] for r in rows) / len(rows) for m in METRICS}}
        for name, rows in groups.items()
        if rows
    }


def tool_use_report(
    backend: Backend,
    tasks: Sequence[ToolTask],
    tools: dict[str, Callable[..., str]],
    *,
    seeds: Sequence[int] = (),
    temperature: float = 0.8,
    no_tools: bool = False,
    max_rounds: int = 3,
    timeout_s: float = 1.0,
) -> dict:
    """The evaluation: a greedy run, one sampled run at `temperature` per seed and, with `no_tools`, the greedy
    baseline without tools.

    Returns:
        `{"n": tasks, "greedy": summary, "sampled": {"temperature", "seeds", "groups": {group: {metric: {"mean",
        "min", "max", "per_seed"}}}}, "no_tools": summary}` ([`summarize`]'s summaries; `sampled` only with seeds,
        `no_tools` only when asked).
    """
    loop = {"max_rounds": max_rounds, "timeout_s": timeout_s}
    report: dict = {"n": len(tasks), "greedy": summarize(run_agent(backend, tasks, tools, **loop))}
    if seeds:
        runs = [
            summarize(run_agent(backend, tasks, tools, temperature=temperature, seed=seed, **loop)) for seed in seeds
        ]
        groups = {
            group: {
                metric: {
                    "mean": sum(values) / len(values),
                    "min": min(values),
                    "max": max(values),
                    "per_seed": values,
                }
                for metric in METRICS
                for values in [[run[group][metric] for run in runs]]
            }
            for group in runs[0]
        }
        report["sampled"] = {"temperature": temperature, "seeds": list(seeds), "groups": groups}
    if no_tools:
        report["no_tools"] = summarize(run_agent(backend, tasks, tools, use_tools=False, **loop))
    return report


def format_table(report: dict) -> str:
    """The report as a markdown table: one row per run and tool (sampled cells are `mean [min, max]`)."""
    lines = [
        "| run | tool | n | called | right tool | valid arguments | success | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(run: str, group: str, n: int, cells: list[str]) -> None:
        lines.append(f"| {run} | {group} | {n} | " + " | ".join(cells) + " |")

    def runs():
        yield "greedy", report["greedy"]
        if "no_tools" in report:
            yield "no tools (greedy)", report["no_tools"]

    for run, summary in runs():
        for group, values in summary.items():
            row(run, group, values["n"], [f"{values[m]:.2f}" for m in METRICS])
    if "sampled" in report:
        sampled = report["sampled"]
        run = f"sampled T={sampled['temperature']:g}, seeds {' '.join(map(str, sampled['seeds']))}"
        for group, metrics in sampled["groups"].items():
            cells = [f"{v['mean']:.2f} [{v['min']:.2f}, {v['max']:.2f}]" for v in (metrics[m] for m in METRICS)]
            row(run, group, report["greedy"][group]["n"], cells)
    return "\n".join(lines)


class LocalBackend:
    """A transformers model and its tokenizer (chat template with `tools=`), `generate` batched over conversations:
    greedy, or sampled at a temperature after seeding torch's RNG with the seed."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 128, batch_size: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @classmethod
    def from_folder(cls, path: str | os.PathLike, device: str = "cpu", dtype: str = "auto", **kwargs) -> LocalBackend:
        """Loads a model folder (or LoRA adapter folder) as `minimind-chat` does; a clear error when it is none."""
        from .chat import load_model_and_tokenizer

        folder = Path(path)
        if not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise FileNotFoundError(f"{path} is not a model folder (no config.json or adapter_config.json)")
        return cls(*load_model_and_tokenizer(folder, device=device, dtype=dtype), **kwargs)

    def __call__(self, conversations, tools, temperature: float | None = None, seed: int | None = None) -> list[str]:
        sampling = {"temperature": temperature, "top_p": 1.0} if temperature else None
        generate = make_generate_fn(
            self.model,
            self.tokenizer,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            sampling=sampling,
        )
        if seed is not None:
            torch.manual_seed(seed)
        return generate([{"prompt": c, "tools": t} for c, t in zip(conversations, tools)])


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint that cannot be reached or refuses a request."""


class EndpointBackend:
    """Any OpenAI-compatible `/v1/chat/completions` endpoint over standard-library HTTP: the tools go in the request,
    `tool_calls` come back in the message. Greedy is `temperature` 0; a seed is passed on as `seed`. Without a
    `model_name` the first model `/v1/models` lists is used (listing it also checks that the endpoint answers)."""

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        api_key: str | None = None,
        *,
        max_tokens: int = 128,
        timeout_s: float = 120.0,
        concurrency: int = 4,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key, self.max_tokens, self.timeout_s, self.concurrency = api_key, max_tokens, timeout_s, concurrency
        listed = self._request("GET", "/models")
        names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if model_name is None and not names:
            raise EndpointError(f"{self.base_url}/models lists no model; pass --model_name")
        self.model_name = model_name or names[0]

    def _request(self, method: str, route: str, body: dict | None = None) -> dict:
        url = self.base_url + route
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise EndpointError(f"{url} answered HTTP {error.code}: {str(detail)[:300]}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EndpointError(f"cannot reach {url}: {reason}") from None
        except json.JSONDecodeError:
            raise EndpointError(f"{url} did not answer JSON") from None

    def complete(self, messages: list[dict], tools: list[dict] | None, temperature=None, seed=None) -> dict:
        """The assistant message of one chat completion."""
        body = {
            "model": self.model_name,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": temperature or 0.0,
        }
        if temperature:
            body["top_p"] = 1.0
        if seed is not None:
            body["seed"] = seed
        if tools:
            body["tools"] = tools
        reply = self._request("POST", "/chat/completions", body)
        try:
            return reply["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url}/chat/completions answered without choices[0].message") from None

    def __call__(self, conversations, tools, temperature: float | None = None, seed: int | None = None) -> list[dict]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            jobs = [pool.submit(self.complete, c, t, temperature, seed) for c, t in zip(conversations, tools)]
            return [job.result() for job in jobs]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m minimind_hf.eval_tools",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local model folder (or LoRA adapter folder)")
    source.add_argument("--base_url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api_key", default=os.environ.get("OPENAI_API_KEY"), help="endpoint key ($OPENAI_API_KEY)")
    parser.add_argument("--model_name", help="endpoint model id (default: the first one /v1/models lists)")
    parser.add_argument("--curriculum_seed", type=int, default=0, help="curriculum whose held-out tool tasks are used")
    parser.add_argument(
        "--tasks", help="a tools evaluation JSONL instead of the curriculum's (tools bound to the seed)"
    )
    parser.add_argument("--limit", type=int, help="evaluate the first N tasks only")
    parser.add_argument("--max_rounds", type=int, default=3, help="assistant turns per task at most")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="tokens per assistant turn at most")
    parser.add_argument("--batch_size", type=int, default=16, help="local model: conversations per generate call")
    parser.add_argument("--concurrency", type=int, default=4, help="endpoint: requests in flight")
    parser.add_argument("--tool_timeout", type=float, default=1.0, help="seconds a tool call may run")
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="sampled runs, one per seed")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of the seeded runs")
    parser.add_argument("--no_tools", action="store_true", help="add the baseline: same questions, no tools offered")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="local model dtype (auto, float32, bfloat16, float16)")
    parser.add_argument("--output", help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.max_rounds < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--max_rounds and --limit must be at least 1")
    if args.seeds and args.temperature <= 0:
        parser.error("--seeds needs a --temperature above 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        if args.tasks:
            from .curriculum import build_world, make_tools

            tasks, tools = load_tool_tasks(args.tasks), make_tools(build_world(args.curriculum_seed))
        else:
            tasks, tools = curriculum_tasks_and_tools(args.curriculum_seed)
        tasks = tasks[: args.limit]
        if args.model:
            backend = LocalBackend.from_folder(
                args.model, args.device, args.dtype, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
            )
            name = args.model
        else:
            backend = EndpointBackend(
                args.base_url,
                args.model_name,
                args.api_key,
                max_tokens=args.max_new_tokens,
                concurrency=args.concurrency,
            )
            name = f"{backend.model_name} at {backend.base_url}"
        report = tool_use_report(
            backend,
            tasks,
            tools,
            seeds=args.seeds,
            temperature=args.temperature,
            no_tools=args.no_tools,
            max_rounds=args.max_rounds,
            timeout_s=args.tool_timeout,
        )
    except (FileNotFoundError, EndpointError, ValueError) as error:
        raise SystemExit(f"eval_tools: {error}") from None
    report["model"], report["curriculum_seed"], report["max_rounds"] = name, args.curriculum_seed, args.max_rounds
    print(f"Tool use of {name}: {len(tasks)} held-out tasks, at most {args.max_rounds} turns each\n")
    print(format_table(report))
    if args.output:
        write_json(args.output, report)
        print(f"\nwrote {args.output}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
