"""MiniMindConfig: presets, upstream aliases, validation, YaRN frequencies."""

import math

import pytest
import torch

from minimind_hf import PRESETS, MiniMindConfig, MiniMindForCausalLM
from minimind_hf.modeling_minimind import MiniMindRotaryEmbedding

# Upstream's published totals (tied embedding counted once) and active parameters for the MoE sizes.
UPSTREAM_COUNTS = {
    "minimind2-small": (25_829_888, 25_829_888),
    "minimind2": (104_030_976, 104_030_976),
    "minimind2-moe": (145_029_760, 91_945_600),
    "minimind3": (63_912_192, 63_912_192),
    "minimind3-moe": (198_416_640, 63_936_768),
}


def count_parameters(config):
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    if config.num_experts:
        expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
        inactive = (config.num_experts - config.num_experts_per_tok) * expert * config.num_hidden_layers
    return total, total - inactive


@pytest.mark.parametrize("name", list(UPSTREAM_COUNTS))
def test_preset_parameter_counts_match_upstream(name):
    assert count_parameters(MiniMindConfig.from_preset(name)) == UPSTREAM_COUNTS[name]


def test_every_preset_builds_and_has_vllm_compatible_head_dim():
    for name in PRESETS:
        config = MiniMindConfig.from_preset(name)
        assert config.head_dim >= 32, name


def test_preset_overrides_apply():
    config = MiniMindConfig.from_preset("minimind2-small", num_hidden_layers=2, hidden_dropout=0.1)
    assert config.num_hidden_layers == 2 and config.hidden_dropout == 0.1 and config.hidden_size == 512


def test_intermediate_size_rules():
    assert MiniMindConfig(hidden_size=512).intermediate_size == 1408
    assert MiniMindConfig(hidden_size=640).intermediate_size == 1728
    assert MiniMindConfig(hidden_size=768).intermediate_size == 2048
    assert MiniMindConfig.from_preset("minimind3").intermediate_size == 2432


def test_router_fields_exist_only_on_moe_configs():
    # TRL decides "MoE or not" from hasattr(config, "output_router_logits").
    dense = MiniMindConfig.from_preset("minimind2-small")
    moe = MiniMindConfig.from_preset("minimind2-moe")
    for field in ("output_router_logits", "router_aux_loss_coef", "num_experts_per_tok"):
        assert not hasattr(dense, field)
        assert hasattr(moe, field)
    reloaded = MiniMindConfig.from_dict(dense.to_dict())
    assert not hasattr(reloaded, "output_router_logits")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hidden_size": 100, "num_attention_heads": 8}, "num_attention_heads"),
        ({"num_attention_heads": 8, "num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok"),
        ({"num_experts": 4, "num_experts_per_tok": 0}, "num_experts_per_tok"),
        ({"num_experts": 4, "router_aux_loss_type": "global"}, "router_aux_loss_type"),
        ({"use_moe": True, "n_routed_experts": 4, "scoring_func": "sigmoid"}, "scoring_func"),
    ],
)
def test_inconsistent_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MiniMindConfig(**kwargs)


def test_unknown_preset_names_the_field():
    with pytest.raises(ValueError, match="preset: unknown preset 'minimind9'"):
        MiniMindConfig.from_preset("minimind9")


def test_minimind2_upstream_names_load_as_aliases():
    upstream = {
        "dropout": 0.1,
        "hidden_size": 640,
        "num_hidden_layers": 8,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "flash_attn": True,
        "use_moe": True,
        "num_experts_per_tok": 2,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "scoring_func": "softmax",
        "aux_loss_alpha": 0.1,
        "seq_aux": True,
        "norm_topk_prob": True,
    }
    config = MiniMindConfig(**upstream)
    assert (config.num_experts, config.num_shared_experts, config.num_experts_per_tok) == (4, 1, 2)
    assert config.router_aux_loss_coef == 0.1 and config.router_aux_loss_type == "seq"
    assert config.attention_dropout == config.hidden_dropout == 0.1
    assert config.use_qk_norm is False
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    assert count_parameters(config)[0] == UPSTREAM_COUNTS["minimind2-moe"][0]
    for name in ("n_routed_experts", "seq_aux", "use_moe", "flash_attn", "aux_loss_alpha"):
        assert name not in config.to_dict()


def test_minimind2_dense_upstream_config_stays_dense():
    config = MiniMindConfig(use_moe=False, n_routed_experts=4, n_shared_experts=1, seq_aux=True, hidden_size=512)
    assert config.num_experts == 0 and not config.use_qk_norm


def test_minimind3_upstream_config_gets_qk_norm_and_switch_loss():
    upstream = {
        "hidden_size": 768,
        "num_hidden_layers": 8,
        "use_moe": True,
        "flash_attn": True,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 96,
        "intermediate_size": 2432,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "inference_rope_scaling": False,
        "rope_scaling": None,
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "moe_intermediate_size": 2432,
        "norm_topk_prob": True,
        "router_aux_loss_coef": 5e-4,
    }
    config = MiniMindConfig(**upstream)
    assert config.use_qk_norm and config.router_aux_loss_type == "switch"
    # upstream's 5e-4 weighs a per-layer loss summed over its 8 layers; ours is one loss over all layers
    assert config.router_aux_loss_coef == pytest.approx(5e-4 * 8)
    assert MiniMindConfig.from_dict(config.to_dict()).router_aux_loss_coef == config.router_aux_loss_coef
    assert count_parameters(config) == UPSTREAM_COUNTS["minimind3-moe"]


def upstream_yarn_inv_freq(dim, base, factor, orig_max, beta_fast, beta_slow):
    """The YaRN rule as upstream MiniMind states it, written independently of transformers."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

    def correction_dim(rotations):
        return dim * math.log(orig_max / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim // 2 - 1)
    ramp = torch.clamp((torch.arange(dim // 2).float() - low) / max(high - low, 0.001), 0, 1)
    return freqs * (1 - ramp + ramp / factor)


@pytest.mark.parametrize("head_dim", [32, 64, 96])
def test_yarn_inv_freq_equals_upstream_formula(head_dim):
    config = MiniMindConfig(
        hidden_size=head_dim * 8, inference_rope_scaling=True, num_attention_heads=8, num_key_value_heads=2
    )
    assert config.rope_parameters["rope_type"] == "yarn" and config.rope_parameters["attention_factor"] == 1.0
    assert config.max_position_embeddings == 32768
    rope = MiniMindRotaryEmbedding(config)
    expected = upstream_yarn_inv_freq(head_dim, 1e6, 16, 2048, 32, 1)
    torch.testing.assert_close(rope.inv_freq, expected, atol=1e-7, rtol=1e-6)
    assert rope.attention_scaling == 1.0
    default = MiniMindRotaryEmbedding(MiniMindConfig(hidden_size=head_dim * 8))
    assert not torch.allclose(default.inv_freq, rope.inv_freq)
    torch.testing.assert_close(default.inv_freq[:2], rope.inv_freq[:2])  # high-frequency dims are left alone


def test_yarn_switched_on_at_load_time(tmp_path):
    config = MiniMindConfig(**PRESETS["tiny"])
    config.save_pretrained(tmp_path)
    yarn = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 1024}
    yarn |= {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}
    loaded = MiniMindConfig.from_pretrained(tmp_path, rope_parameters=yarn, max_position_embeddings=4096)
    assert loaded.rope_parameters["rope_type"] == "yarn" and loaded.max_position_embeddings == 4096


def test_config_json_round_trip(tmp_path):
    config = MiniMindConfig.from_preset("minimind2-moe")
    config.save_pretrained(tmp_path)
    loaded = MiniMindConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert set(loaded.auto_map) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForSequenceClassification",
    }
