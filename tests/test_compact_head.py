"""`compact_fused_lm_head` (the DPO and GRPO recipes'): TRL's fused-head fields on the labelled positions only, checked
field by field and with gradients against TRL's own head on the same model."""

import copy

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from minimind_hf.trainers.compact_head import compact_fused_lm_head
from tests.utils import tiny_model

FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def batch(vocab: int, rows: int = 3, length: int = 40):
    """Left-padded prompts with completions of different lengths: labels only on each row's completion."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    for row, start in enumerate((30, 25, 34)):
        labels[row, :start] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


@pytest.mark.parametrize("variant", ["dense", "moe_shared"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_every_field_and_its_gradient_are_trls(variant, temperature):
    reference = tiny_model(variant, router_aux_loss_coef=0.0).train()
    ours = copy.deepcopy(reference)
    add_fused_lm_head(reference, temperature=temperature, outputs=FIELDS)
    add_fused_lm_head(ours, temperature=temperature, outputs=FIELDS)
    compact_fused_lm_head(ours, temperature=temperature)
    inputs, labels = batch(reference.config.vocab_size)
    shapes = []
    hook = ours.lm_head.register_forward_hook(lambda module, args, out: shapes.append(out.shape))
    expected = reference(**inputs, labels=labels, fused_lm_head=True)
    got = ours(**inputs, labels=labels, fused_lm_head=True)
    hook.remove()
    # the head ran on the 15 columns that hold a label in some row, not on all 39
    assert shapes == [(3, 15, reference.config.vocab_size)]
    assert got.label_mask.equal(expected.label_mask)
    for name in FIELDS:
        want, have = getattr(expected, name), getattr(got, name)
        assert have.shape == want.shape and have.dtype == want.dtype, name
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    (expected.log_probs.sum() + expected.entropy.sum()).backward()
    (got.log_probs.sum() + got.entropy.sum()).backward()
    for (name, a), b in zip(reference.named_parameters(), ours.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_calls_without_the_fused_head_are_the_models_own():
    model = tiny_model()
    add_fused_lm_head(model)
    compact_fused_lm_head(model)
    inputs, labels = batch(model.config.vocab_size)
    plain = tiny_model()(**inputs, labels=labels)
    patched = model(**inputs, labels=labels)
    torch.testing.assert_close(patched.logits, plain.logits)
    torch.testing.assert_close(patched.loss, plain.loss)


def test_a_batch_without_labels_gives_a_differentiable_zero():
    model = tiny_model().train()
    add_fused_lm_head(model)
    compact_fused_lm_head(model)
    inputs, labels = batch(model.config.vocab_size)
    out = model(**inputs, labels=torch.full_like(labels, -100), fused_lm_head=True)
    assert out.log_probs.abs().sum() == 0 and out.loss == 0
    out.loss.backward()  # no error: the output stays connected to the model
