"""Load on the OpenAI-compatible server (`minimind_hf/serve.py`): concurrent streaming chat clients over loopback.

    python benchmarks/serve_load.py --threads 1 --clients 64
    python benchmarks/serve_load.py --threads 2 --model outputs/tiny/sft --clients 16 --requests 4 --max-tokens 64

Serves `--model DIR` (any stage's folder, loaded as `minimind-serve` loads it) or, by default, a randomly initialised
`tiny` MiniMind with the shipped tokenizer, in-process: uvicorn on a free loopback port in a background thread. Then
`--clients` concurrent clients (tasks sharing one `openai.AsyncOpenAI`) each send `--requests` streaming chat requests
in turn (temperature 0, `--max-tokens`, usage included). A request that takes over `--timeout` seconds is cancelled
(its connection closed, which stops its generation), so the run ends within `--requests * --timeout` seconds.

A request is an error when it raises (an error event in the stream included), times out, or its stream ends without
finishing normally: a chunk with a finish reason, then the usage chunk, which the server sends just before
`data: [DONE]`. Any error: exit status 1.

Reported: wall seconds for all requests, requests/s, generated tokens/s (the usage's completion tokens), and p50 / p95
(nearest rank) of time to first token (first chunk with text; the end, for a reply without any) and of total latency.
The server generates one reply at a time behind a lock (no batching), so requests queue: time to first token grows
with a request's place in the queue and its p95 approaches the whole run. That is the server's design, not noise.
"""

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

import openai
import torch
from transformers.utils import logging as hf_logging

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.chat import load_model_and_tokenizer
from minimind_hf.serve import create_app, serve_in_thread
from minimind_hf.tokenization import load_tokenizer


async def one_request(client: openai.AsyncOpenAI, model: str, prompt: str, args) -> dict:
    """One streamed chat request: {"ttft", "latency", "tokens"} or {"error"}."""
    start, first, finish, tokens = time.perf_counter(), None, None, None
    try:
        async with asyncio.timeout(args.timeout):
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=args.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        text = choice.delta.content or getattr(choice.delta, "reasoning_content", None)
                        if text and first is None:
                            first = time.perf_counter()
                        finish = choice.finish_reason or finish
    except Exception as error:  # TimeoutError, connection and API errors: all count
        return {"error": f"{type(error).__name__}: {error or f'over {args.timeout} s'}"}
    end = time.perf_counter()
    if finish is None or tokens is None:
        return {"error": f"stream ended without {'a finish reason' if finish is None else 'usage'}"}
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens}


async def run_load(base_url: str, model: str, args) -> tuple[list[dict], float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=args.timeout)

    async def one_client(index: int) -> list[dict]:
        prompts = [f"Client {index}, request {r}: tell me a short story." for r in range(args.requests)]
        return [await one_request(client, model, prompt, args) for prompt in prompts]

    start = time.perf_counter()
    async with client:
        per_client = await asyncio.gather(*(one_client(i) for i in range(args.clients)))
    return [result for results in per_client for result in results], time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def format_table(row: dict) -> str:
    """The result as a one-row Markdown table."""
    keys = list(row)
    cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys), "| " + " | ".join(cells) + " |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder to serve (default: a random `tiny` MiniMind)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU intra-op threads)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent streaming clients")
    parser.add_argument("--requests", type=int, default=1, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request, queueing included")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()

    if args.model:
        model, tokenizer = load_model_and_tokenizer(args.model, args.device)
        name = Path(args.model).resolve().name
    else:
        torch.manual_seed(0)
        model = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny")).to(args.device).eval()
        tokenizer, name = load_tokenizer(), "tiny"
    base_url, stop = serve_in_thread(create_app(model, tokenizer, name))
    try:
        results, wall = asyncio.run(run_load(base_url, name, args))
    finally:
        stop()

    done = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft, latency = [r["ttft"] for r in done], [r["latency"] for r in done]
    row = {
        "clients": args.clients,
        "requests": len(results),
        "errors": len(errors),
        "wall s": wall,
        "requests/s": len(done) / wall,
        "gen tokens/s": sum(r["tokens"] for r in done) / wall,
        "TTFT p50 s": percentile(ttft, 50),
        "TTFT p95 s": percentile(ttft, 95),
        "latency p50 s": percentile(latency, 50),
        "latency p95 s": percentile(latency, 95),
        "torch threads": torch.get_num_threads(),
    }
    print(
        f"device={args.device} threads={torch.get_num_threads()} model={args.model or 'tiny (random init)'} "
        f"clients={args.clients} requests_per_client={args.requests} max_tokens={args.max_tokens} "
        f"timeout={args.timeout} torch={torch.__version__} openai={openai.__version__}"
    )
    print(format_table(row))
    for error in sorted(set(errors)):
        print(f"error ({errors.count(error)}x): {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
