"""The SFT throughput benchmark end to end on the test shape: both rows, their padding, the upstream row's token count
checked against the assistant tokens of the dialogues it trained on, the ratio column and the JSON. No timing
assertions."""

from pathlib import Path

import pytest

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.tokenization import load_tokenizer
from tests.utils import check_bench_rows, run_throughput_bench, write_jsonl

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sft_throughput.py"
MAX_LENGTH, BATCH_SIZE, WARMUP, STEPS = 128, 4, 1, 2


def upstream_loss_tokens(ids: list[int], tokenizer) -> int:
    """Targets of upstream's SFT loss mask in `ids`: from after each `<|im_start|>assistant\\n` through the next
    `<|im_end|>\\n` (or the end of the row), minus the row's first token (which no position predicts)."""
    start, end = (
        tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("<|im_start|>assistant\n", "<|im_end|>\n")
    )
    marked, i = [False] * len(ids), 0
    while i < len(ids):
        if ids[i : i + len(start)] != start:
            i += 1
            continue
        j = i + len(start)
        while j < len(ids) and ids[j : j + len(end)] != end:
            j += 1
        for k in range(i + len(start), min(j + len(end), len(ids))):
            marked[k] = True
        i = j + len(end)
    return sum(marked[1:])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft_throughput")
    answer = "小明喜欢红色。"
    records = [
        {
            "conversations": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": answer * (1 + i % 9)},
                *([{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Yes."}] if i % 3 else []),
            ]
        }
        for i in range(40)
    ]
    records[5]["conversations"][1]["content"] = answer * 60  # longer than MAX_LENGTH: truncated
    data = write_jsonl(tmp / "sft.jsonl", records)
    bench, rows, written, printed = run_throughput_bench(SCRIPT, data, tmp, MAX_LENGTH, BATCH_SIZE, WARMUP, STEPS)
    return bench, data, rows, written, printed


def test_every_mode_trains_and_pads_as_designed(run):
    _, _, rows, written, _ = run
    recipe, trl, upstream = check_bench_rows(rows, written, STEPS, ("recipe", "trl", "upstream"))
    # upstream pads every dialogue to MAX_LENGTH; the recipe batches dialogues of similar length, padded to the longest
    assert upstream["positions"] == STEPS * BATCH_SIZE * MAX_LENGTH
    assert recipe["pad_fraction"] < 0.2 < 0.4 < upstream["pad_fraction"]
    assert recipe["positions"] < upstream["positions"]
    # the trl row is the same recipe, batches and targets with TRL's own trainer: the same first loss
    assert (trl["positions"], trl["real_tokens"]) == (recipe["positions"], recipe["real_tokens"])
    assert trl["first_loss"] == pytest.approx(recipe["first_loss"], rel=1e-4)


def test_upstream_counts_the_assistant_tokens_of_the_dialogues_it_trained_on(run):
    bench, data, rows, _, _ = run
    upstream = rows[-1]
    consumed = upstream["dialogues"]
    assert len(consumed) == len(set(consumed)) == STEPS * BATCH_SIZE  # one seeded shuffle, no repeats
    dialogues = bench.load_dialogues(str(data))
    with training_chat_template(load_tokenizer()) as tokenizer:
        masked, scanned = 0, 0
        for index in consumed:
            encoded = tokenizer.apply_chat_template(
                dialogues[index]["messages"], return_dict=True, return_assistant_tokens_mask=True
            )
            # The first token of a row is never a target; the rows are cut to MAX_LENGTH.
            masked += sum(encoded["assistant_masks"][1:MAX_LENGTH])
            scanned += upstream_loss_tokens(encoded["input_ids"][:MAX_LENGTH], tokenizer)
    assert upstream["real_tokens"] == masked == scanned


def test_ratio_column_is_recipe_over_upstream_and_the_header_names_the_setup(run):
    _, _, rows, _, printed = run
    recipe, trl, upstream = rows
    assert upstream["ratio"] == 1.0
    assert recipe["ratio"] == pytest.approx(recipe["tokens_per_s"] / upstream["tokens_per_s"])
    assert trl["ratio"] == pytest.approx(trl["tokens_per_s"] / upstream["tokens_per_s"])
    lines = printed.splitlines()
    assert lines[0].startswith("device=cpu") and "threads=1" in lines[0] and "torch=" in lines[0]
    assert "load_avg=" in lines[0] and lines[-1].startswith("load_avg after:")
    table = {line.split()[1]: line.split() for line in lines if line.startswith("tiny ")}
    assert table["upstream"][-1] == "1.00" and table["recipe"][-1] == f"{recipe['ratio']:.2f}"
    assert table["recipe"][3] == f"{recipe['pad_fraction']:.3f}"


def test_a_shared_prefix_yaml_adds_the_unshared_row_with_the_same_targets_and_fewer_positions(tmp_path):
    """A YAML with `shared_prefix: true` gets the `unshared` row: the same recipe, dialogues and targets, every
    dialogue in its own row; the shared rows feed the long common system prompt once per group."""
    import yaml

    config = yaml.safe_load((SCRIPT.parent.parent / "recipes" / "tiny" / "sft.yaml").read_text(encoding="utf-8"))
    config["shared_prefix"] = True
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    system = "You can use tools. " * 12  # a long prompt every dialogue begins with
    records = [
        {
            "conversations": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": "Yes." * (1 + i % 3)},
            ]
        }
        for i in range(24)
    ]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    extra = ["--config", str(tmp_path / "shared.yaml")]
    _, rows, _, printed = run_throughput_bench(SCRIPT, data, tmp_path, 256, 4, 1, 2, extra)
    assert [row["mode"] for row in rows] == ["recipe", "unshared", "trl", "upstream"]
    shared, unshared, trl, upstream = rows
    assert all("error" not in row for row in rows), rows
    assert shared["real_tokens"] == unshared["real_tokens"] == trl["real_tokens"]  # upstream's shuffle draws others
    assert shared["first_loss"] == pytest.approx(unshared["first_loss"], rel=1e-4)
    assert trl["first_loss"] == pytest.approx(unshared["first_loss"], rel=1e-4)
    assert trl["non_pad_positions"] == unshared["non_pad_positions"]
    # four ~70-token dialogues per step, 60 of them the prompt: one group feeds it once instead of four times
    assert shared["non_pad_positions"] < 0.5 * unshared["non_pad_positions"]
    assert unshared["ratio"] == pytest.approx(unshared["tokens_per_s"] / upstream["tokens_per_s"])
    assert any(line.startswith("tiny") and " unshared " in line for line in printed.splitlines())
