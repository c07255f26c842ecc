"""The pretraining throughput benchmark's core: batches count the right tokens and one step yields sane metrics.
No timing assertions."""

import argparse
import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.tokenization import load_tokenizer
from tests.utils import SMALL, load_script, tiny_config, write_jsonl

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "pretrain_throughput.py"
MAX_LENGTH, BATCH_SIZE = 64, 2


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def docs(bench, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "pretrain.jsonl"
    texts = [f"Document {i}: " + "小明喜欢红色。" * (1 + i % 8) for i in range(40)]
    texts.append("long " * 200)  # longer than MAX_LENGTH: truncated
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return bench.load_documents(tokenizer, path, MAX_LENGTH, min_tokens=10**9)


def test_documents_are_bos_text_eos_truncated(docs, tokenizer):
    assert len(docs) == 41
    assert all(d[0] == tokenizer.bos_token_id for d in docs)
    assert all(d[-1] == tokenizer.eos_token_id for d in docs[:-1])
    assert len(docs[-1]) == MAX_LENGTH and docs[-1][-1] != tokenizer.eos_token_id


def test_packed_and_padded_batches(bench, docs, tokenizer):
    packed = bench.packed_batches(docs, MAX_LENGTH, BATCH_SIZE, tokenizer.pad_token_id)
    padded = bench.padded_batches(docs, MAX_LENGTH, BATCH_SIZE, tokenizer.pad_token_id)
    for batch in packed + padded:
        labels = batch["inputs"]["labels"]
        assert batch["real_tokens"] == int((labels[:, 1:] != -100).sum())

    # Packed: one padding-free row per step, rows no longer than MAX_LENGTH each, positions restarting per document.
    for batch in packed:
        inputs = batch["inputs"]
        assert inputs["input_ids"].shape[0] == 1 and inputs["input_ids"].shape[1] <= BATCH_SIZE * MAX_LENGTH
        assert batch["non_pad_positions"] == batch["positions"]
        starts = int((inputs["position_ids"] == 0).sum())
        assert batch["real_tokens"] == batch["positions"] - starts  # every token but each document's first
    packed_docs = sum(int((b["inputs"]["position_ids"] == 0).sum()) for b in packed)
    assert packed_docs <= len(docs)

    # Rows: the same packs, BATCH_SIZE rows of at most MAX_LENGTH, the same targets and attention spans.
    rows = bench.packed_row_batches(docs, MAX_LENGTH, BATCH_SIZE, tokenizer.pad_token_id)
    assert len(rows) == len(packed)
    for row_batch, packed_batch in zip(rows, packed):
        assert set(row_batch["inputs"]) == {"input_ids", "position_ids", "labels"}
        assert row_batch["inputs"]["input_ids"].shape[0] == BATCH_SIZE
        assert row_batch["inputs"]["input_ids"].shape[1] <= MAX_LENGTH
        for key in ("real_tokens", "non_pad_positions", "attended_keys"):
            assert row_batch[key] == packed_batch[key], key

    # Padded: BATCH_SIZE documents per step, each padded to MAX_LENGTH with -100 labels and no attention mask.
    for i, batch in enumerate(padded):
        inputs = batch["inputs"]
        assert set(inputs) == {"input_ids", "labels"}
        assert inputs["input_ids"].shape == (BATCH_SIZE, MAX_LENGTH)
        lengths = [len(d) for d in docs[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]]
        assert batch["non_pad_positions"] == sum(lengths)
        assert batch["real_tokens"] == sum(n - 1 for n in lengths)
        assert (inputs["input_ids"] == tokenizer.pad_token_id).sum() == BATCH_SIZE * MAX_LENGTH - sum(lengths)


def test_one_step_metrics_are_sane(bench, docs, tokenizer):
    config = tiny_config()
    results = {}
    builders = {"packed": bench.packed_batches, "rows": bench.packed_row_batches, "padded": bench.padded_batches}
    for mode, build in builders.items():
        batches = build(docs, MAX_LENGTH, BATCH_SIZE, tokenizer.pad_token_id)
        results[mode] = bench.measure(config, batches, steps=1, warmup=1)
        timed = batches[1]
        assert (
            results[mode]["real_tokens"]
            == timed["real_tokens"]
            == int((timed["inputs"]["labels"][:, 1:] != -100).sum())
        )
    packed, rows, padded = results["packed"], results["rows"], results["padded"]
    dense_params = sum(p.numel() for p in MiniMindForCausalLM(config).parameters())
    assert packed["pad_fraction"] == 0
    assert rows["pad_fraction"] < 0.1 < padded["pad_fraction"] < 1
    # Same documents kept apart either way: after the same warm-up step the two losses agree.
    assert rows["loss"] == pytest.approx(packed["loss"], rel=1e-4)
    for result in results.values():
        assert result["tokens_per_s"] > 0 and result["seconds"] > 0
        assert math.isfinite(result["loss"]) and result["loss"] > 0
        assert result["peak_bytes"] > 0
        assert result["active_params"] == dense_params  # dense: every parameter, tied embedding once
        # Every real token attends to at least itself and at most MAX_LENGTH keys.
        assert result["real_tokens"] <= result["attended_keys"] <= result["real_tokens"] * MAX_LENGTH


def test_flops_per_token_matches_torch_flop_counter(bench):
    """The MFU numerator against an independent count: torch's FlopCounterMode over one forward + backward. Eager
    attention computes every query-key product (no causal skipping), so the formula is evaluated with all S keys."""
    config = tiny_config()
    config._attn_implementation = "eager"
    model = MiniMindForCausalLM(config)
    batch, seq = 2, 32
    ids = torch.randint(3, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    active = sum(p.numel() for p in model.parameters())
    predicted = bench.flops_per_token(config, active, mean_context=seq) * batch * seq
    assert counter.get_total_flops() == pytest.approx(predicted, rel=0.01)


def test_table_lists_every_row(bench):
    row = {
        "preset": "tiny",
        "active_params": 1.6e6,
        "mode": "packed",
        "steps": 2,
        "real_tokens": 1000,
        "pad_fraction": 0.0,
        "tokens_per_s": 123.4,
        "speedup": 4.5,
        "peak_bytes": 2**30,
        "mfu": 0.012,
    }
    table = bench.format_table([row, {**row, "mode": "padded", "speedup": None}], cuda=True)
    lines = table.splitlines()
    assert len(lines) == 4 and "MFU %" in lines[0]
    assert lines[2].split() == ["tiny", "1.60", "packed", "2", "500", "0.000", "123", "4.50", "1024", "1.2"]
    assert lines[3].split()[7] == "-"


def test_moe_vs_dense_counts_active_parameters_and_prints_its_table():
    """Active parameters against upstream's published sizes (MiniMind2-MoE 91.95M, minimind-3-MoE 63.94M of
    145.03M / 198.42M), and the script's table from a short run: three models, the ratio to dense in the same run."""
    moe_vs_dense = load_script(SCRIPT.parent / "moe_vs_dense.py")
    with torch.device("meta"):
        small_moe = MiniMindForCausalLM(MiniMindConfig.from_preset("minimind2-moe"))
        big_moe = MiniMindForCausalLM(MiniMindConfig.from_preset("minimind3-moe"))
    assert moe_vs_dense.active_parameters(small_moe) == 91_945_600
    assert moe_vs_dense.active_parameters(big_moe) == 63_936_768
    run = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "moe_vs_dense.py"), "--threads", "1", "--hidden", "64", "--layers", "1"]
        + ["--batch", "1", "--seq", "16", "--warmup", "0", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("device=cpu threads=1 hidden=64 layers=1")
    rows = {line.split("  ")[0].strip(): line for line in lines if line.startswith(("dense", "moe"))}
    assert set(rows) == {"dense", "moe 4x top-2 + shared", "moe 4x top-1"}
    assert rows["dense"].split()[-1] == "1.00" and rows["dense"].split()[-4] == "1.00"  # dense vs itself


def test_serve_load_streams_every_request_and_counts_failures():
    """The serving load benchmark end to end with tiny settings (its table: every request done, none failed), and a
    server that cannot be reached: every request counted as an error, none hanging."""
    for module in ("fastapi", "openai", "uvicorn"):
        pytest.importorskip(module)
    script = SCRIPT.parent / "serve_load.py"
    run = subprocess.run(
        [sys.executable, str(script), "--threads", "1", "--clients", "3", "--requests", "2", "--max-tokens", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("device=") and "threads=1" in lines[0]
    row = dict(zip(lines[1].strip("| ").split(" | "), lines[3].strip("| ").split(" | ")))
    assert (row["clients"], row["requests"], row["errors"], row["torch threads"]) == ("3", "6", "0", "1")
    assert float(row["gen tokens/s"]) > 0 and 0 < float(row["TTFT p50 s"]) <= float(row["latency p95 s"])

    serve_load = load_script(script)
    args = argparse.Namespace(clients=2, requests=2, max_tokens=4, timeout=10)
    results, _ = asyncio.run(serve_load.run_load("http://127.0.0.1:9/v1", "tiny", args))  # nothing listens there
    assert len(results) == 4 and all("error" in result for result in results)


def test_train_levers_runs_the_recipe_per_lever_and_prints_its_table(tmp_path):
    """The recipe-levers benchmark end to end with tiny settings (the test shape, rows of 64 tokens, batch 4, two
    steps after one warm-up step; baseline and unfused AdamW, each in its own process): one table row per lever, sane
    numbers, the baseline its own reference, and the same final loss from both (same seed, same batches)."""
    data = write_jsonl(
        tmp_path / "pretrain.jsonl", [{"text": f"Doc {i}: " + "小明喜欢红色。" * (1 + i % 5)} for i in range(48)]
    )
    results = tmp_path / "levers.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "train_levers.py"), "--threads", "1", "--steps", "2", "--warmup", "1"]
        + ["--levers", "baseline", "adamw_torch", "--json", str(results), "--"]
        + ["--dataset_files", str(data), "--config_overrides", SMALL, "--max_length", "64"]
        + ["--per_device_train_batch_size", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("device=cpu") and "threads=1" in lines[0] and "steps=2 warmup=1" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("baseline", "adamw_torch"))}
    assert set(rows) == {"baseline", "adamw_torch"}
    assert rows["baseline"][1:3] == ["1", "2"] and rows["baseline"][5] == "1.00"  # threads, steps, x base
    measured = {row["lever"]: row for row in json.loads(results.read_text())["rows"]}
    assert set(measured) == {"baseline", "adamw_torch"}
    for name, row in measured.items():
        assert row["threads"] == 1 and row["steps"] == 2, name
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0 and row["s_per_step"] > 0
        assert 0 < row["real_tokens"] <= row["steps"] * 4 * 64  # two steps of at most 4 rows of 64 tokens
        assert math.isfinite(row["loss"]) and row["loss"] > 0 and row["peak_bytes"] > 0
    assert measured["baseline"]["ratio"] == 1.0
    assert measured["adamw_torch"]["real_tokens"] == measured["baseline"]["real_tokens"]  # the same batches
    # Fused and foreach AdamW compute the same update: after the same three steps the losses agree.
    assert measured["baseline"]["resolved"]["optim"] != measured["adamw_torch"]["resolved"]["optim"] == "adamw_torch"
    assert measured["adamw_torch"]["loss"] == pytest.approx(measured["baseline"]["loss"], rel=1e-3)
