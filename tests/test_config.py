"""MiniMindConfig: presets, upstream aliases, validation, YaRN frequencies."""

import inspect
import json
import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from minimind_hf import PRESETS, MiniMindConfig, MiniMindForCausalLM
from minimind_hf.configuration_minimind import DENSE_MOE_FIELDS, UPSTREAM_YARN_PARAMETERS, translate_upstream_config
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


MOE_FIELDS = (
    "num_experts_per_tok",
    "num_shared_experts",
    "moe_intermediate_size",
    "norm_topk_prob",
    "router_aux_loss_coef",
    "router_aux_loss_type",
)


def init_default(name):
    return inspect.signature(MiniMindConfig.__init__).parameters[name].default


def test_every_config_has_every_moe_field():
    dense = MiniMindConfig.from_preset("minimind2-small")
    assert {name: getattr(dense, name) for name in MOE_FIELDS} == {
        "num_experts_per_tok": init_default("num_experts_per_tok"),
        "num_shared_experts": 0,
        "moe_intermediate_size": dense.intermediate_size,
        "norm_topk_prob": init_default("norm_topk_prob"),
        "router_aux_loss_coef": 0.0,
        "router_aux_loss_type": init_default("router_aux_loss_type"),
    }
    # `output_router_logits` marks a router model to TRL and transformers: MoE configs only, even when given
    assert not hasattr(dense, "output_router_logits") and "output_router_logits" not in dense.to_dict()
    assert not hasattr(MiniMindConfig(output_router_logits=True), "output_router_logits")
    assert MiniMindConfig(num_experts=4).to_dict()["output_router_logits"] is False
    # whatever a dense config is given (here MiniMind2-MoE's settings), it holds the dense values
    assert {
        name: getattr(MiniMindConfig.from_preset("minimind2-moe", num_experts=0), name) for name in MOE_FIELDS
    } == {
        **DENSE_MOE_FIELDS,
        "moe_intermediate_size": MiniMindConfig(hidden_size=640).intermediate_size,
    }
    assert MiniMindConfig.from_dict(dense.to_dict()).to_dict() == dense.to_dict()
    assert all(name in dense.to_dict() for name in MOE_FIELDS)
    # router_aux_loss_coef=None: 0.01 on MoE configs; the presets keep their own values
    assert init_default("router_aux_loss_coef") is None
    assert MiniMindConfig(num_experts=4).router_aux_loss_coef == 0.01
    for name, preset in PRESETS.items():
        config = MiniMindConfig.from_preset(name)
        assert all(getattr(config, key) == value for key, value in preset.items() if key in MOE_FIELDS), name


def test_dense_config_json_without_moe_fields_still_loads(tmp_path):
    # as saved before every config carried the MoE fields
    config = MiniMindConfig.from_preset("tiny").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in MOE_FIELDS}))
    assert MiniMindConfig.from_pretrained(tmp_path).to_dict() == MiniMindConfig.from_preset("tiny").to_dict()


FAST_TRAINING = {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_strategy": "no"}
FAST_TRAINING |= {"report_to": "none", "bf16": False, "activation_checkpointing": False, "max_length": 64}
FAST_TRAINING |= {"dataloader_pin_memory": False}


@pytest.mark.parametrize("stage", ["sft", "sft-moe", "reason", "distill", "dpo"])
def test_trl_trains_a_dense_model_as_dense(stage, tmp_path):
    """TRL reads `output_router_logits` / `router_aux_loss_coef` to decide whether a model is MoE: a dense MiniMind
    has no `output_router_logits`, and its SFT-family (and DPO) training must request no router logits and add no aux loss (the
    MoE run shows what the test would see otherwise)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from minimind_hf.chat_templates import use_training_chat_template
    from minimind_hf.tokenization import load_tokenizer
    from minimind_hf.trainers import (
        LogitDistillationConfig,
        LogitDistillationTrainer,
        ReasoningSFTConfig,
        ReasoningSFTTrainer,
    )
    from tests.utils import tiny_model

    moe = stage == "sft-moe"
    model = tiny_model("moe_shared" if moe else "dense").train()
    answer = "<think>\n1 + 1 = 2.\n</think>\n<answer>\n2\n</answer>"
    dataset = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": answer}]}
            for i in range(4)
        ]
    )
    kwargs = {
        "model": model,
        "train_dataset": dataset,
        "processing_class": use_training_chat_template(load_tokenizer()),
    }
    common = {"output_dir": str(tmp_path), "assistant_only_loss": True, **FAST_TRAINING}
    if stage == "dpo":
        pairs = [
            {
                "prompt": row["messages"][:1],
                "chosen": row["messages"][1:],
                "rejected": [{**row["messages"][1], "content": "3"}],
            }
            for row in dataset
        ]
        kwargs |= {"train_dataset": Dataset.from_list(pairs), "processing_class": load_tokenizer()}
        kwargs["ref_model"] = tiny_model("dense")
        trainer = DPOTrainer(args=DPOConfig(**{**FAST_TRAINING, "output_dir": str(tmp_path)}), **kwargs)
    elif stage == "reason":
        trainer = ReasoningSFTTrainer(args=ReasoningSFTConfig(**common), **kwargs)
    elif stage == "distill":
        args = LogitDistillationConfig(**common)
        trainer = LogitDistillationTrainer(teacher_model=tiny_model("dense", seed=1), args=args, **kwargs)
    else:
        trainer = SFTTrainer(args=SFTConfig(**common), **kwargs)
    router_requests = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: router_requests.append(bool(kwargs.get("output_router_logits"))),
        with_kwargs=True,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and router_requests
    assert trainer.aux_loss_enabled is moe and getattr(model.config, "output_router_logits", False) is moe
    assert all(router_requests) is moe and any(router_requests) is moe
    assert all(("aux_loss" in entry) is moe for entry in logs), logs
    if not moe:
        assert model.config.router_aux_loss_coef == 0.0


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


def test_validate_architecture_runs_on_construction_load_and_save(tmp_path):
    # transformers' `@strict` hook: `validate()` (called by save_pretrained) runs it after attributes changed
    config = MiniMindConfig.from_preset("tiny-moe")
    config.validate()
    config.num_experts_per_tok = 5
    with pytest.raises(StrictDataclassClassValidationError, match="num_experts_per_tok: 5 must be between 1 and"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    MiniMindConfig.from_preset("tiny-moe").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "router_aux_loss_type": "global"}))
    with pytest.raises(ValueError, match="router_aux_loss_type: 'global' is not one of seq, switch"):
        MiniMindConfig.from_pretrained(tmp_path)


def test_translate_upstream_config_renames_without_touching_its_input():
    minimind2 = {"use_moe": True, "n_routed_experts": 4, "n_shared_experts": 1, "aux_loss_alpha": 0.1}
    minimind2 |= {"seq_aux": True, "scoring_func": "softmax", "dropout": 0.1, "flash_attn": True, "hidden_size": 640}
    before = dict(minimind2)
    assert translate_upstream_config(minimind2) == {
        "hidden_size": 640,
        "use_qk_norm": False,
        "attention_dropout": 0.1,
        "hidden_dropout": 0.1,
        "num_experts": 4,
        "num_shared_experts": 1,
        "router_aux_loss_coef": 0.1,
        "router_aux_loss_type": "seq",
    }
    assert minimind2 == before
    minimind3 = {"use_moe": True, "flash_attn": True, "num_experts": 4, "num_hidden_layers": 6}
    minimind3 |= {"router_aux_loss_coef": 5e-4, "inference_rope_scaling": True}
    ours = translate_upstream_config(minimind3)
    assert ours.pop("router_aux_loss_coef") == pytest.approx(5e-4 * 6)
    assert ours == {
        "num_experts": 4,
        "num_hidden_layers": 6,
        "use_qk_norm": True,
        "router_aux_loss_type": "switch",
        "rope_parameters": UPSTREAM_YARN_PARAMETERS,
        "max_position_embeddings": 32768,
    }
    assert (
        translate_upstream_config({"use_moe": False, "n_routed_experts": 4, "n_shared_experts": 1})["num_experts"] == 0
    )
    # our own names pass through, an explicit use_qk_norm wins, upstream's `type`-keyed rope_scaling yields
    ours = {"hidden_size": 512, "use_qk_norm": False, "num_experts": 0, "rope_parameters": {"rope_type": "default"}}
    assert translate_upstream_config({**ours, "flash_attn": True, "rope_scaling": {"type": "yarn"}}) == ours


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
