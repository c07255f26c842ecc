"""Parity with independent references in float32: transformers' Llama, Qwen3 and Qwen3-MoE classes loaded with the
same weights, and a MiniMind2-MoE reference written here from upstream MiniMind's description of it."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from tests.utils import tiny_model

TOL = 1e-5
YARN = {
    "rope_type": "yarn",
    "rope_theta": 1e6,
    "factor": 4.0,
    "original_max_position_embeddings": 256,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}


def shared_fields(config):
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_parameters": dict(config.rope_parameters),
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def batch(seed=0, shape=(2, 37), vocab=6400):
    ids = torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))
    return ids, ids.clone()


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("rope", ["default", "yarn"])
def test_dense_matches_llama(rope):
    overrides = {"rope_parameters": YARN, "max_position_embeddings": 1024} if rope == "yarn" else {}
    ours = tiny_model("dense", **overrides)
    reference = LlamaForCausalLM(LlamaConfig(**shared_fields(ours.config), attention_bias=False, mlp_bias=False))
    reference.load_state_dict(ours.state_dict(), strict=True)
    reference.eval()
    ids, labels = batch(shape=(2, 300) if rope == "yarn" else (2, 37))
    with torch.no_grad():
        a, b = ours(ids, labels=labels), reference(ids, labels=labels)
    assert max_diff(a.logits, b.logits) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL


def test_qk_norm_dense_matches_qwen3():
    ours = tiny_model("qk_norm")
    reference = Qwen3ForCausalLM(Qwen3Config(**shared_fields(ours.config), attention_bias=False))
    reference.load_state_dict(ours.state_dict(), strict=True)
    reference.eval()
    ids, labels = batch(1)
    with torch.no_grad():
        a, b = ours(ids, labels=labels), reference(ids, labels=labels)
    assert max_diff(a.logits, b.logits) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL


def to_qwen3_moe_state_dict(state_dict, config):
    """transformers 5 keeps Qwen3-MoE experts as stacked tensors: gate_up_proj [E, 2I, H], down_proj [E, H, I]."""
    converted = {}
    for key, value in state_dict.items():
        if ".mlp.experts." not in key:
            converted[key] = value
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts"
        experts = range(config.num_experts)
        converted[f"{prefix}.gate_up_proj"] = torch.stack(
            [
                torch.cat([state_dict[f"{prefix}.{e}.gate_proj.weight"], state_dict[f"{prefix}.{e}.up_proj.weight"]])
                for e in experts
            ]
        )
        converted[f"{prefix}.down_proj"] = torch.stack([state_dict[f"{prefix}.{e}.down_proj.weight"] for e in experts])
    return converted


def test_minimind3_moe_matches_qwen3_moe():
    ours = tiny_model("moe_top1")
    config = ours.config
    reference = Qwen3MoeForCausalLM(
        Qwen3MoeConfig(
            **shared_fields(config),
            attention_bias=False,
            num_experts=config.num_experts,
            num_experts_per_tok=config.num_experts_per_tok,
            moe_intermediate_size=config.moe_intermediate_size,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            router_aux_loss_coef=config.router_aux_loss_coef,
            output_router_logits=True,
        )
    )
    reference.load_state_dict(to_qwen3_moe_state_dict(ours.state_dict(), config), strict=True)
    reference.eval()
    ids, labels = batch(2)
    with torch.no_grad():
        a = ours(ids, labels=labels, output_router_logits=True)
        b = reference(ids, labels=labels)
    assert max_diff(a.logits, b.logits) <= TOL
    assert abs(a.aux_loss.item() - b.aux_loss.item()) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    for ours_layer, ref_layer in zip(a.router_logits, b.router_logits):
        assert max_diff(ours_layer, ref_layer) <= TOL


def rms_norm(x, weight, eps):
    return weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def swiglu(x, sd, prefix):
    gate = x @ sd[f"{prefix}.gate_proj.weight"].T
    return (F.silu(gate) * (x @ sd[f"{prefix}.up_proj.weight"].T)) @ sd[f"{prefix}.down_proj.weight"].T


def minimind2_moe_reference(sd, cfg, ids, labels):
    """MiniMind2-MoE from the spec: pre-norm GQA decoder, rotate-half RoPE (theta 1e6), softmax router over the routed
    experts, top-k renormalised, one always-on shared expert, sequence-level aux loss summed over layers."""
    bsz, seq = ids.shape
    heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    num_experts, top_k = cfg.num_experts, cfg.num_experts_per_tok
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(torch.arange(seq).float(), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(x):  # x [B, S, H, D]
        rotated = torch.cat([-x[..., dim // 2 :], x[..., : dim // 2]], -1)
        return x * cos[None, :, None] + rotated * sin[None, :, None]

    h = sd["model.embed_tokens.weight"][ids]
    aux = torch.zeros(())
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        x = rms_norm(h, sd[f"{p}.input_layernorm.weight"], cfg.rms_norm_eps)
        q = rope((x @ sd[f"{p}.self_attn.q_proj.weight"].T).view(bsz, seq, heads, dim))
        k = rope((x @ sd[f"{p}.self_attn.k_proj.weight"].T).view(bsz, seq, kv_heads, dim))
        v = (x @ sd[f"{p}.self_attn.v_proj.weight"].T).view(bsz, seq, kv_heads, dim)
        k, v = k.repeat_interleave(heads // kv_heads, 2), v.repeat_interleave(heads // kv_heads, 2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim) + causal
        attn = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(bsz, seq, heads * dim)
        h = h + attn @ sd[f"{p}.self_attn.o_proj.weight"].T

        x = rms_norm(h, sd[f"{p}.post_attention_layernorm.weight"], cfg.rms_norm_eps)
        probs = (x @ sd[f"{p}.mlp.gate.weight"].T).softmax(-1)  # [B, S, E]
        weights, chosen = probs.topk(top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for b in range(bsz):
            for t in range(seq):
                for slot in range(top_k):
                    e = chosen[b, t, slot].item()
                    out[b, t] += weights[b, t, slot] * swiglu(x[b, t], sd, f"{p}.mlp.experts.{e}")
        out = out + swiglu(x, sd, f"{p}.mlp.shared_experts.0")
        counts = F.one_hot(chosen, num_experts).float().sum((1, 2))  # [B, E]
        load = counts / (seq * top_k / num_experts)
        aux = aux + (load * probs.mean(1)).sum(-1).mean()
        h = h + out
    h = rms_norm(h, sd["model.norm.weight"], cfg.rms_norm_eps)
    logits = h @ sd["model.embed_tokens.weight"].T
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    return logits, ce + cfg.router_aux_loss_coef * aux, aux


def test_minimind2_moe_matches_spec_reference():
    ours = tiny_model("moe_shared", router_aux_loss_coef=0.1)
    ids, labels = batch(3, shape=(2, 19))
    with torch.no_grad():
        out = ours(ids, labels=labels)
        ref_logits, ref_loss, ref_aux = minimind2_moe_reference(ours.state_dict(), ours.config, ids, labels)
    assert max_diff(out.logits, ref_logits) <= TOL
    assert abs(out.aux_loss.item() - ref_aux.item()) <= TOL
    assert abs(out.loss.item() - ref_loss.item()) <= TOL
