"""The DPO throughput benchmark end to end on the test shape: both rows, their padding, the upstream row's token count
checked against the assistant tokens of the pairs it trained on, both losses at log 2 on the first step (policy equal
to the reference), upstream's loss against a hand-computed value. No timing assertions."""

import math
from pathlib import Path

import pytest
import torch

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.tokenization import load_tokenizer
from tests.utils import check_bench_rows, load_script, run_throughput_bench, write_jsonl

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "dpo_throughput.py"
MAX_LENGTH, BATCH_SIZE, WARMUP, STEPS = 64, 4, 1, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo_throughput")
    records = [
        {
            "chosen": [
                {"role": "user", "content": f"Who likes red, {i}?"},
                {"role": "assistant", "content": "小明喜欢红色。" * (1 + i % 4)},
            ],
            "rejected": [
                {"role": "user", "content": f"Who likes red, {i}?"},
                {"role": "assistant", "content": "I don't know." * (1 + i % 3)},
            ],
        }
        for i in range(24)
    ]
    records[3]["chosen"][1]["content"] = "小明喜欢红色。" * 40  # longer than MAX_LENGTH: truncated
    data = write_jsonl(tmp / "dpo.jsonl", records)
    bench, rows, written, printed = run_throughput_bench(SCRIPT, data, tmp, MAX_LENGTH, BATCH_SIZE, WARMUP, STEPS)
    return bench, data, rows, written, printed


def test_every_mode_trains_from_the_reference_and_pads_as_designed(run):
    _, _, rows, written, printed = run
    recipe, trl, upstream = check_bench_rows(rows, written, STEPS, ("recipe", "trl", "upstream"))
    for row in rows:
        # the first step's policy is the reference: every log-ratio is 0 and the sigmoid loss is log 2
        assert row["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    # upstream pads every chosen and rejected row to MAX_LENGTH (inputs ids[:, :-1]); TRL to the batch's longest row
    assert upstream["positions"] == STEPS * 2 * BATCH_SIZE * (MAX_LENGTH - 1)
    assert recipe["pad_fraction"] < upstream["pad_fraction"] and recipe["positions"] < upstream["positions"]
    assert recipe["ratio"] == pytest.approx(recipe["tokens_per_s"] / upstream["tokens_per_s"])
    # the trl row trains on the same batches with TRL's head over every position: the same loss at the last step
    assert (trl["real_tokens"], trl["positions"]) == (recipe["real_tokens"], recipe["positions"])
    assert trl["loss"] == pytest.approx(recipe["loss"], rel=1e-4)
    assert "data=" in printed.splitlines()[0] and printed.splitlines()[-1].startswith("load_avg after:")


def test_upstream_counts_the_assistant_tokens_of_the_pairs_it_trained_on(run):
    bench, data, rows, _, _ = run
    upstream = rows[-1]
    consumed = upstream["pairs"]
    assert len(consumed) == len(set(consumed)) == STEPS * BATCH_SIZE  # one seeded shuffle, no repeats
    pairs = bench.load_pairs(str(data))
    with training_chat_template(load_tokenizer()) as tokenizer:
        expected = 0
        for index in consumed:
            for side in ("chosen", "rejected"):
                encoded = tokenizer.apply_chat_template(
                    pairs[index]["prompt"] + pairs[index][side], return_dict=True, return_assistant_tokens_mask=True
                )
                assert sum(encoded["assistant_masks"]) > 0
                expected += sum(encoded["assistant_masks"][1:MAX_LENGTH])  # targets ids[1:], cut to MAX_LENGTH
    assert upstream["real_tokens"] == expected


def test_upstream_loss_by_hand():
    bench = load_script(SCRIPT)
    # two pairs; row means of the masked log-probabilities: chosen -1.0, -0.5; rejected -2.0, -0.5;
    # reference chosen -1.5, -1.0; reference rejected -1.5, -1.0
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logps = torch.tensor([[-0.5, -1.5, -9.0], [-0.5, -9.0, -9.0], [-1.0, -2.0, -3.0], [-0.25, -0.75, -9.0]]) * mask
    ref = torch.tensor([[-1.5, -1.5, 0.0], [-1.0, 0.0, 0.0], [-1.5, -1.5, -1.5], [-1.0, -1.0, 0.0]])
    beta = 0.1
    # pair 1: (-1 - -2) - (-1.5 - -1.5) = 1; pair 2: (-0.5 - -0.5) - (-1 - -1) = 0
    expected = (-math.log(1 / (1 + math.exp(-beta * 1.0))) + math.log(2)) / 2
    assert bench.dpo_loss(ref, logps, mask, beta).item() == pytest.approx(expected, rel=1e-6)
