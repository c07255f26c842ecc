"""Behaviour of the MiniMind modules: caching, attention backends, packing, padding, checkpointing, MoE routing and
the standard transformers output contracts."""

import re
from contextlib import nullcontext

import pytest
import torch
from transformers.cache_utils import DynamicCache
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from minimind_hf import MiniMindConfig, MiniMindForCausalLM, MiniMindForSequenceClassification
from minimind_hf.configuration_minimind import MINIMIND3_UPSTREAM_AUX_COEF
from minimind_hf.modeling_minimind import CACHE_ARG
from tests.utils import briefly_trained, pattern_tokens, tiny_config, tiny_model


def ids(seed=0, shape=(2, 24)):
    return torch.randint(3, 6400, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained():
    return {v: briefly_trained(tiny_model(v)) for v in ("dense", "qk_norm", "moe_shared", "moe_top1")}


def test_greedy_generate_with_cache_equals_without(trained, variant):
    model = trained[variant]
    prompt = pattern_tokens(8).unsqueeze(0)
    kwargs = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape[1] == 28
    assert torch.equal(with_cache, without)
    assert len(set(with_cache[0, 8:].tolist())) > 1  # the trained model is not stuck on one token


@pytest.mark.parametrize("spelling", ["past_key_values", "cache"])
def test_incremental_decoding_logits_equal_full_forward(trained, variant, spelling):
    """Callers may pass the KV cache under either name on every supported transformers (5.24 renamed it); the
    output carries it under the installed version's name, which is the one `generate` reads."""
    model = trained[variant]
    seq = ids(2, (2, 16))
    with torch.no_grad():
        full = model(seq).logits
        out = model(seq[:, :10], use_cache=True)
        steps = [out.logits]
        cache = getattr(out, CACHE_ARG)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 10
        for t in range(10, 16):
            # the name the installed version does not speak still works; where that is the old `past_key_values`
            # (transformers >= 5.24) it warns, as transformers' own models do
            old = spelling == "past_key_values" != CACHE_ARG
            with pytest.warns(FutureWarning, match="`past_key_values` is deprecated") if old else nullcontext():
                out = model(seq[:, t : t + 1], use_cache=True, **{spelling: cache})
            cache = getattr(out, CACHE_ARG)
            steps.append(out.logits)
    assert cache.get_seq_length() == 16
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_cache_under_both_names_at_once_is_refused():
    model = tiny_model()
    cache = getattr(model(ids(), use_cache=True), CACHE_ARG)
    with pytest.raises(ValueError, match="(?i)both"):
        model(ids(), past_key_values=cache, cache=cache)


def test_eager_equals_sdpa(variant):
    model = tiny_model(variant)
    seq = ids(3)
    mask = torch.ones_like(seq)
    mask[1, :5] = 0
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(seq, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(seq, attention_mask=mask).logits
    assert (sdpa[0] - eager[0]).abs().max() < 1e-5
    assert (sdpa[1, 5:] - eager[1, 5:]).abs().max() < 1e-5


@pytest.mark.parametrize("training", [False, True])
def test_packed_documents_equal_separate_runs(variant, training):
    model = tiny_model(variant)
    model.train(training)
    docs = [ids(4, (1, 7)), ids(5, (1, 11)), ids(6, (1, 6))]
    packed = torch.cat(docs, 1)
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs]).unsqueeze(0)
    with torch.no_grad():
        # use_cache defaults to True from the config: packing must stay isolated anyway.
        packed_logits = model(packed, position_ids=position_ids).logits
        separate = torch.cat([model(d).logits for d in docs], 1)
        leaky = model(packed).logits  # without position_ids the documents see each other
    assert (packed_logits - separate).abs().max() < 1e-5
    assert (leaky[:, 7:] - separate[:, 7:]).abs().max() > 1e-3


def test_left_padded_batch_equals_unpadded_runs(trained, variant):
    model = trained[variant]
    short, long = ids(7, (1, 6)), ids(8, (1, 10))
    batch = torch.zeros(2, 10, dtype=torch.long)
    batch[0, 4:], batch[1] = short[0], long[0]
    mask = (torch.arange(10) >= torch.tensor([[4], [0]])).long()
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        alone = model(short).logits
    assert (padded[0, 4:] - alone[0]).abs().max() < 1e-5
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    generated = model.generate(batch, attention_mask=mask, **kwargs)
    assert torch.equal(generated[0, 10:], model.generate(short, **kwargs)[0, 6:])
    assert torch.equal(generated[1, 10:], model.generate(long, **kwargs)[0, 10:])


def test_gradient_checkpointing_gives_same_gradients(variant):
    """With `use_cache=True` too: checkpointing must drop the layers' cache (transformers clears it by the name the
    layer receives it under), or the backward replay appends to it a second time."""
    seq = ids(9)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(variant).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(seq, labels=seq, use_cache=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("moe_variant", ["moe_shared", "moe_top1"])
def test_router_learns_from_the_lm_loss_alone(moe_variant):
    # Upstream's top-1 trap: renormalised top-1 weight p/p gives the router no gradient from the LM loss.
    model = tiny_model(moe_variant, router_aux_loss_coef=0.0).train()
    seq = ids(10)
    model(seq, labels=seq).loss.backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad.abs().sum() > 0


def test_top1_routing_weight_is_exactly_one():
    model = tiny_model("moe_top1")
    hidden = torch.randn(13, model.config.hidden_size)
    _, weights, _ = model.model.layers[0].mlp.gate(hidden)
    assert torch.equal(weights, torch.ones_like(weights))


def test_aux_loss_is_added_to_loss_with_labels():
    model = tiny_model("moe_shared", router_aux_loss_coef=0.05)
    seq = ids(11)
    with torch.no_grad():
        out = model(seq, labels=seq, output_router_logits=True)
        plain = model.loss_function(logits=out.logits, labels=seq, vocab_size=model.config.vocab_size)
    assert out.aux_loss > 0.5 * model.config.num_hidden_layers  # a roughly balanced router scores ~1 per layer
    torch.testing.assert_close(out.loss, plain + 0.05 * out.aux_loss)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (2 * 24, 4)
    no_labels = model(seq)
    assert no_labels.loss is None and no_labels.router_logits is None


def test_moe_dispatch_runs_every_expert_once_per_layer():
    model = tiny_model("moe_shared")
    calls = []
    for expert in model.model.layers[0].mlp.experts:
        expert.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        model(ids(12, (3, 9)))
    assert len(calls) == 4 and sum(calls) == 3 * 9 * 2  # every token visits top-2 experts, grouped per expert


def test_sequence_aux_loss_ignores_padding():
    model = tiny_model("moe_shared")
    seq = ids(13, (1, 12))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], 1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 12)], 1).long()
    with torch.no_grad():
        alone = model(seq, output_router_logits=True).aux_loss
        with_pad = model(padded, attention_mask=mask, output_router_logits=True).aux_loss
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)


def test_output_contracts(variant):
    model = tiny_model(variant)
    model.set_attn_implementation("eager")
    seq = ids(14, (2, 9))
    with torch.no_grad():
        out = model(seq, output_hidden_states=True, output_attentions=True)
        as_tuple = model(seq, return_dict=False)
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(seq)).logits
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.attentions[0].shape == (2, 4, 9, 9)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    torch.testing.assert_close(from_embeds, out.logits)


def test_logits_to_keep_slices_the_last_positions():
    model = tiny_model()
    seq = ids(15)
    with torch.no_grad():
        torch.testing.assert_close(model(seq, logits_to_keep=1).logits, model(seq).logits[:, -1:])


def test_tied_embeddings_survive_resize():
    model = tiny_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.resize_token_embeddings(6464)
    assert model.lm_head.weight.shape == (6464, 64) and model.config.vocab_size == 6464
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model(ids(16, (1, 5))).logits.shape[-1] == 6464


def test_untied_embeddings_are_separate_parameters():
    model = MiniMindForCausalLM(tiny_config(tie_word_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_dense_forward_exports_with_torch_export():
    model = tiny_model()
    seq = ids(17, (1, 8))
    exported = torch.export.export(model, args=(), kwargs={"input_ids": seq, "use_cache": False})
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(input_ids=seq, use_cache=False).logits, model(seq).logits)


def test_sequence_classification_scores_the_last_real_token():
    torch.manual_seed(0)
    model = MiniMindForSequenceClassification(tiny_config(num_labels=1)).eval()
    seq = ids(18, (1, 7))
    right_padded = torch.cat([seq, torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(seq).logits
        b = model(right_padded, attention_mask=(right_padded != 0).long()).logits
        hidden = model.model(seq).last_hidden_state[:, -1]
    assert a.shape == (1, 1)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, model.score(hidden))


def test_tensor_parallel_plan_matches_every_variant(variant):
    """As transformers' `ModelTesterMixin.test_tp_plan_matches_params`: every plan entry names parameters the model
    has (layer and expert numbers as `*`). And every projection of the decoder is in the plan (only the router and
    the norms stay replicated), so `tp_plan="auto"` shards the whole model."""
    model = tiny_model(variant)
    plan = model.config.base_model_tp_plan
    generic = {re.sub(r"\.\d+(?=\.|$)", ".*", name.removeprefix("model.")) for name, _ in model.named_parameters()}
    modules = {name.rsplit(".", 1)[0] for name in generic}
    assert not [entry for entry in plan if entry not in generic | modules]
    linears = {
        re.sub(r"\.\d+(?=\.|$)", ".*", name.removeprefix("model."))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")
    }
    assert linears == {entry for entry in plan if entry.startswith("layers.")}


def upstream_minimind3_switch_loss(router_logits, num_experts):
    """upstream minimind-3's balance loss, written here without transformers: per
    layer E * sum_e f_e * P_e (f_e the share of tokens whose top-1 expert is e, P_e the mean router probability of e),
    summed over layers."""
    total = 0.0
    for logits in router_logits:
        probs = logits.softmax(-1)
        f = torch.nn.functional.one_hot(probs.argmax(-1), num_experts).float().mean(0)
        total = total + num_experts * (f * probs.mean(0)).sum()
    return total


def test_minimind3_moe_balance_pressure_matches_upstream():
    """The preset's coefficient on transformers' all-layer Switch loss pushes each router probability exactly as
    upstream's 5e-4 on its per-layer sum does, when every layer routes alike (identical logits per layer)."""
    config = MiniMindConfig.from_preset("minimind3-moe")
    layers, experts = config.num_hidden_layers, config.num_experts
    assert config.router_aux_loss_coef == pytest.approx(MINIMIND3_UPSTREAM_AUX_COEF * layers)
    one_layer = torch.randn(40, experts, generator=torch.Generator().manual_seed(0))
    grads = []
    for loss_fn, coef in (
        (lambda logits: load_balancing_loss_func(logits, experts, 1), config.router_aux_loss_coef),
        (lambda logits: upstream_minimind3_switch_loss(logits, experts), MINIMIND3_UPSTREAM_AUX_COEF),
    ):
        leaf = one_layer.clone().requires_grad_(True)
        (coef * loss_fn((leaf,) * layers)).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-12)
    assert grads[0].abs().max() > 0


def test_a_dense_model_has_no_router_logits():
    """A dense model has no router and its config no `output_router_logits` (TRL and transformers' common tests take
    that field for a router model); asked for router logits anyway it returns none, as transformers' dense models
    do, and the same logits."""
    model = tiny_model("dense")
    assert not hasattr(model.config, "output_router_logits")
    plain = model(torch.tensor([[5, 6, 7]]))
    asked = model(torch.tensor([[5, 6, 7]]), output_router_logits=True)
    assert asked.router_logits is None and asked.aux_loss is None
    torch.testing.assert_close(asked.logits, plain.logits, rtol=0, atol=0)
    assert tiny_model("moe_shared").config.output_router_logits is False
