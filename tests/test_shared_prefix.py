"""Shared-prefix SFT batches (`packing.SharedPrefixCollator`, `sft.yaml`'s `shared_prefix`): tool dialogues that open
with the same system prompt feed it once per group, with the loss and gradients of the plain batch."""

import json

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.data import load_sft_dataset
from minimind_hf.packing import SharedPrefixCollator
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import RecipeError
from recipes import sft
from tests.utils import FAST, SMALL, tiny_model, write_jsonl


def tokenized(dataset, tmp_path):
    """TRL's tokenization of `dataset` (assistant-only labels) and TRL's collator."""
    tokenizer = load_tokenizer()
    args = SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, max_length=1024, report_to="none", use_cpu=True
    )
    with training_chat_template(tokenizer):
        trainer = SFTTrainer(model=tiny_model(), args=args, train_dataset=dataset, processing_class=tokenizer)
    return [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))], trainer.data_collator, tokenizer


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**{k: v for k, v in batch.items() if k != "num_tokens_fed"}, use_cache=False).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def tool_dialogues(tmp_path_factory):
    """The curriculum's first 12 tool dialogues (English and Chinese system prompts, each with the three schemas)."""
    train = ensure_curriculum(seed=0)["tools"]["train"]
    return tokenized(load_sft_dataset([train]).select(range(12)), tmp_path_factory.mktemp("tools"))


def test_a_shared_prefix_batch_trains_exactly_as_the_plain_batch(tool_dialogues):
    examples, collator, tokenizer = tool_dialogues
    plain = collator(examples)
    shared = SharedPrefixCollator(collator)(examples)
    # one row per system prompt (English, Chinese), each holding its six dialogues after one copy of the prompt
    assert shared["input_ids"].shape[0] == 2
    assert shared["attention_mask"].shape == (2, 1, shared["input_ids"].shape[1], shared["input_ids"].shape[1])
    fed = int(plain["attention_mask"].sum())
    assert int(shared["num_tokens_fed"]) < 0.3 * fed  # measured: 2,452 of 8,034
    # the same targets, the same loss and the same gradients (float rounding apart)
    assert sorted(shared["labels"][shared["labels"] != -100].tolist()) == sorted(
        plain["labels"][plain["labels"] != -100].tolist()
    )
    model = tiny_model()
    loss, grads = loss_and_grads(model, plain)
    shared_loss, shared_grads = loss_and_grads(model, shared)
    assert abs(shared_loss - loss) < 1e-5 * loss
    assert (shared_grads - grads).abs().max() < 1e-5 * grads.abs().max()
    # what is shared is the system prompt with the schemas (and the opening of the user turn the group has in common,
    # never an assistant token); a dialogue sees it and itself, never another dialogue
    for row in range(2):
        positions = shared["position_ids"][row]
        starts = (positions[1:] < positions[:-1]).nonzero().flatten() + 1  # every dialogue after the first
        common = int(positions[starts[0]])
        prefix = tokenizer.decode(shared["input_ids"][row, :common])
        assert "<tools>" in prefix and "</tools>" in prefix and "<|im_start|>assistant" not in prefix
        mask = shared["attention_mask"][row, 0]
        first, second = int(starts[0]), int(starts[1])
        assert mask[second, :common].all() and not mask[second, first:second].any()
        assert mask[first:second, first:second].equal(torch.ones(second - first, second - first).tril().bool())


def test_rows_that_share_too_little_stay_plain_rows(tmp_path):
    """Dialogues whose system prompts differ from their first word, and a row labelled from its first token (a
    replayed pretraining document, here the first dialogue's very tokens), are not merged: each keeps its own causal
    row and the loss is the plain batch's."""
    names = ["Alice", "Bob", "Chen", "Dana"]
    records = [
        {
            "conversations": [
                {"role": "system", "content": f"{n} is the assistant."},
                {"role": "user", "content": f"{n}?"},
                {"role": "assistant", "content": n},
            ]
        }
        for n in names
    ]
    dataset = load_sft_dataset([write_jsonl(tmp_path / "sft.jsonl", records)])
    examples, collator, _ = tokenized(dataset, tmp_path)
    examples.append({"input_ids": examples[0]["input_ids"], "labels": examples[0]["input_ids"]})  # a replayed row
    plain = collator(examples)
    shared = SharedPrefixCollator(collator, min_prefix=16)(examples)
    assert shared["input_ids"].shape[0] == len(examples)
    lengths = sorted(int(n) for n in plain["attention_mask"].sum(1))
    width = shared["input_ids"].shape[1]
    mask = shared["attention_mask"][:, 0]
    for row in range(len(examples)):
        real = int((shared["position_ids"][row] > 0).sum()) + 1
        expected = torch.ones(width, width).tril().bool()
        expected[real:] = False
        expected[real:, real:] = torch.eye(width - real).bool()
        assert mask[row].equal(expected)
    assert sorted(int((shared["position_ids"][r] > 0).sum()) + 1 for r in range(len(examples))) == lengths
    model = tiny_model()
    assert abs(loss_and_grads(model, shared)[0] - loss_and_grads(model, plain)[0]) < 1e-5


def test_the_sft_recipe_with_shared_prefix_logs_the_same_losses(tmp_path):
    """Two steps of `recipes/tiny/sft_tools.yaml` on curriculum tool dialogues with and without `shared_prefix`: the
    same losses step by step, and about a quarter of the positions fed (the trainer's `num_tokens`)."""
    logs = {}
    for shared in ("false", "true"):
        out = tmp_path / shared
        argv = [
            "--config", "recipes/tiny/sft_tools.yaml",
            "--model_name_or_path", "",
            "--preset", "tiny",
            "--config_overrides", SMALL,
            "--output_dir", str(out),
            "--max_steps", "2",
            "--shared_prefix", shared,
            *FAST,
            "--per_device_train_batch_size", "16",  # the YAML's batch
        ]  # fmt: skip
        sft.main(*sft.make_parser().parse_args_and_config(argv))
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        logs[shared] = [(e["loss"], e["num_tokens"]) for e in history if "loss" in e]
    assert [loss for loss, _ in logs["true"]] == pytest.approx([loss for loss, _ in logs["false"]], rel=1e-4)
    assert logs["true"][-1][1] < 0.35 * logs["false"][-1][1]
    with pytest.raises(RecipeError, match="shared_prefix needs a 4D attention mask.*flex_attention"):
        sft.main(
            *sft.make_parser().parse_args_and_config(
                ["--config", "recipes/tiny/sft_tools.yaml", "--model_name_or_path", "", "--preset", "tiny",
                 "--output_dir", str(tmp_path / "x"), "--attn_implementation", "flex_attention"]
            )
        )  # fmt: skip
    with pytest.raises(RecipeError, match="shared_prefix"):
        sft.main(
            *sft.make_parser().parse_args_and_config(
                ["--config", "recipes/tiny/sft_tools.yaml", "--output_dir", str(tmp_path / "x"), "--shared_prefix",
                 "true", "--packing", "true"]
            )
        )  # fmt: skip
