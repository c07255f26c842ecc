"""The SFT and LoRA recipes' trainer, TRL's `SFTTrainer` with `compact_trainer_heads`: the LM head only where a target
is, with the loss, gradients and logged metrics of `SFTTrainer.compute_loss` through TRL's own head, on the same
batch of curriculum dialogues."""

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.data import load_sft_dataset
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.trainers import SharedPrefixSFTTrainer, compact_trainer_heads
from tests.utils import tiny_model


def make_trainer(cls, model, dataset, tmp_path, compact=False, **config):
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        max_length=1024,
        per_device_train_batch_size=6,
        report_to="none",
        use_cpu=True,
        activation_checkpointing=False,
        **config,
    )
    tokenizer = load_tokenizer()
    with training_chat_template(tokenizer):
        trainer = cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if compact:
        compact_trainer_heads(trainer)
    return trainer


def loss_grads_metrics(trainer, batch, num_items=None):
    """One training-mode loss with its gradients and the metrics `compute_loss` logged."""
    model = trainer.model.train()
    model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.item(), grads, metrics


@pytest.fixture(scope="module")
def dialogues():
    """The curriculum's first 6 tool dialogues and 6 chat dialogues (system prompts, tool calls, several turns)."""
    paths = ensure_curriculum(seed=0)
    tools = load_sft_dataset([paths["tools"]["train"]]).select(range(6))
    chat = load_sft_dataset([paths["sft"]["train"]]).select(range(6))
    return tools, chat


@pytest.mark.parametrize("variant", ["dense", "moe_shared"])
@pytest.mark.parametrize("which", [0, 1])
def test_loss_gradients_and_metrics_are_trls(dialogues, variant, which, tmp_path):
    """The token loss as TRL's; an MoE model's balance loss is left out here (coefficient 0: TRL's fused head puts
    transformers' Mixtral-style balance loss in place of the model's own, see the next test)."""
    dataset = dialogues[which]
    reference = make_trainer(SFTTrainer, tiny_model(variant, router_aux_loss_coef=0.0), dataset, tmp_path / "trl")
    ours = make_trainer(
        SFTTrainer, tiny_model(variant, router_aux_loss_coef=0.0), dataset, tmp_path / "o", compact=True
    )
    batch = reference.data_collator([reference.train_dataset[i] for i in range(6)])
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert targets < 0.5 * batch["labels"].numel()  # most positions carry no target
    for num_items in (None, torch.tensor(targets + 7)):  # the Trainer's count across accumulation steps
        loss, grads, metrics = loss_grads_metrics(reference, batch, num_items)
        our_loss, our_grads, our_metrics = loss_grads_metrics(ours, batch, num_items)
        assert our_loss == pytest.approx(loss, rel=1e-5)
        assert (our_grads - grads).abs().max() <= 1e-5 * grads.abs().max()
        assert set(our_metrics) == set(metrics)
        for name in set(metrics) - {"aux_loss"}:
            assert our_metrics[name] == pytest.approx(metrics[name], rel=1e-4, abs=1e-6), name


def test_an_moe_models_balance_loss_is_its_own(dialogues, tmp_path):
    """On MoE the loss adds `router_aux_loss_coef` times the model's own balance loss (what its forward returns with
    labels, as in pretraining), and logs it as `aux_loss`."""
    model = tiny_model("moe_shared")
    trainer = make_trainer(SFTTrainer, model, dialogues[1], tmp_path, compact=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    loss, _, metrics = loss_grads_metrics(trainer, batch)
    own = model(**batch, use_cache=False)
    assert metrics["aux_loss"] == pytest.approx(own.aux_loss.item(), rel=1e-5)
    assert loss == pytest.approx(own.loss.item(), rel=1e-5)  # the model's own loss: mean cross-entropy + coef * aux


def test_the_logits_asked_for_are_the_targets_positions(dialogues, tmp_path):
    """The model is asked for the positions whose next token is a target in some row, not the whole row."""
    trainer = make_trainer(SFTTrainer, tiny_model(), dialogues[0], tmp_path, compact=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    shapes = []
    hook = trainer.model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(out.shape))
    trainer.compute_loss(trainer.model.train(), dict(batch))
    hook.remove()
    wanted = (batch["labels"][:, 1:] != -100).any(0)
    assert shapes == [(6, int(wanted.sum()), trainer.model.config.vocab_size)]
    assert int(wanted.sum()) < 0.3 * batch["labels"].shape[1]  # a tool dialogue is mostly prompt


@pytest.mark.filterwarnings("ignore:`label_smoothing_factor` is deprecated:FutureWarning")
def test_dft_and_label_smoothing_give_trls_loss(dialogues, tmp_path):
    batch_of = lambda t: t.data_collator([t.train_dataset[i] for i in range(6)])  # noqa: E731
    for config in ({"loss_type": "dft"}, {"label_smoothing_factor": 0.1}):
        reference = make_trainer(SFTTrainer, tiny_model(), dialogues[1], tmp_path / "trl", **config)
        ours = make_trainer(SFTTrainer, tiny_model(), dialogues[1], tmp_path / "ours", compact=True, **config)
        batch = batch_of(reference)
        assert loss_grads_metrics(ours, batch)[0] == pytest.approx(loss_grads_metrics(reference, batch)[0], rel=1e-6)


def test_shared_prefix_rows_through_the_compact_head_give_the_plain_batchs_loss(dialogues, tmp_path):
    """The shared-prefix trainer with the compact head (as `recipes/sft.py` builds it): its 4D-mask rows give the
    loss and gradients of TRL's plain batch through TRL's head."""
    plain = make_trainer(SFTTrainer, tiny_model(), dialogues[0], tmp_path / "plain")
    shared = make_trainer(SharedPrefixSFTTrainer, tiny_model(), dialogues[0], tmp_path / "shared", compact=True)
    examples = [plain.train_dataset[i] for i in range(6)]
    loss, grads, _ = loss_grads_metrics(plain, plain.data_collator(examples))
    batch = shared.data_collator(examples)
    batch.pop("num_tokens_fed")
    shared_loss, shared_grads, _ = loss_grads_metrics(shared, batch)
    assert shared_loss == pytest.approx(loss, rel=1e-5)
    assert (shared_grads - grads).abs().max() <= 1e-5 * grads.abs().max()
