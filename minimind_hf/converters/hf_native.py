"""MiniMind folder -> a folder in an architecture transformers, vLLM and llama.cpp's converter run natively.

| MiniMind model                               | target              | how                                     |
|----------------------------------------------|---------------------|-----------------------------------------|
| dense                                        | `LlamaForCausalLM`  | same weight names                       |
| dense + QK-norm (minimind-3)                 | `Qwen3ForCausalLM`  | same weight names                       |
| MoE + QK-norm (minimind-3-MoE)               | `Qwen3MoeForCausalLM` | same names; shared experts folded in  |
| MoE without QK-norm (MiniMind2-MoE)          | `MixtralForCausalLM` | `block_sparse_moe.experts.N.w1/w3/w2`, shared experts folded in |

Experts are written per expert, the on-disk layout vLLM and transformers (which stacks them on load) both read.
YaRN `rope_parameters` (with `attention_factor`) are carried over unchanged: both engines honour it.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, MixtralConfig, PreTrainedConfig, Qwen3Config, Qwen3MoeConfig

from ..configuration_minimind import MiniMindConfig
from .common import (
    ConversionError,
    atomic_output,
    check_moe_export,
    copy_tokenizer_files,
    describe_model,
    folded_experts,
    resolve_source,
    save_generation_config,
    yarn_parameters,
)


@dataclass(frozen=True)
class NativeTarget:
    """One native architecture: what it can represent and where its MoE weights live.

    Attributes:
        architecture: the `architectures` entry of config.json.
        config_class: transformers config class.
        qk_norm: whether the architecture always applies QK-norm (True) or never does (False).
        moe: whether it is a sparse-MoE architecture.
        router: name of the router weight under `model.layers.N.` (MoE only).
        experts: name template of one expert's projections under `model.layers.N.`, keyed by MiniMind's projection.
        always_renormalises: whether top-k routing weights are always renormalised (else `norm_topk_prob` is kept).
    """

    architecture: str
    config_class: type[PreTrainedConfig]
    qk_norm: bool
    moe: bool
    router: str | None = None
    experts: dict[str, str] = field(default_factory=dict)
    always_renormalises: bool = False


TARGETS = {
    "llama": NativeTarget("LlamaForCausalLM", LlamaConfig, qk_norm=False, moe=False),
    "qwen3": NativeTarget("Qwen3ForCausalLM", Qwen3Config, qk_norm=True, moe=False),
    "qwen3_moe": NativeTarget(
        "Qwen3MoeForCausalLM",
        Qwen3MoeConfig,
        qk_norm=True,
        moe=True,
        router="mlp.gate.weight",
        experts={
            "gate_proj": "mlp.experts.{e}.gate_proj.weight",
            "up_proj": "mlp.experts.{e}.up_proj.weight",
            "down_proj": "mlp.experts.{e}.down_proj.weight",
        },
    ),
    "mixtral": NativeTarget(
        "MixtralForCausalLM",
        MixtralConfig,
        qk_norm=False,
        moe=True,
        router="block_sparse_moe.gate.weight",
        experts={
            "gate_proj": "block_sparse_moe.experts.{e}.w1.weight",
            "up_proj": "block_sparse_moe.experts.{e}.w3.weight",
            "down_proj": "block_sparse_moe.experts.{e}.w2.weight",
        },
        always_renormalises=True,
    ),
}


def choose_target(config: MiniMindConfig, target: str = "auto") -> str:
    """Pick (or check) the native architecture for `config`.

    Raises:
        ConversionError: unknown target, or one that cannot represent the model exactly, with the reason.
    """
    if target == "auto":
        if config.num_experts:
            target = "qwen3_moe" if config.use_qk_norm else "mixtral"
        else:
            target = "qwen3" if config.use_qk_norm else "llama"
    if target not in TARGETS:
        raise ConversionError(f"target: unknown target {target!r}; choose auto or one of {', '.join(TARGETS)}")
    spec = TARGETS[target]
    if spec.qk_norm != config.use_qk_norm:
        have = "applies QK-norm" if config.use_qk_norm else "has no QK-norm"
        always = "always applies" if spec.qk_norm else "has no"
        raise ConversionError(
            f"{spec.architecture} cannot represent this model exactly ({describe_model(config)}): the model {have}, "
            f"{spec.architecture} {always} QK-norm"
        )
    if spec.moe != bool(config.num_experts):
        kind = "sparse-MoE" if spec.moe else "dense"
        raise ConversionError(
            f"{spec.architecture} cannot represent this model exactly ({describe_model(config)}): it is a {kind} "
            "architecture"
        )
    check_moe_export(config, spec.architecture, spec.always_renormalises)
    if config.hidden_act != "silu":
        raise ConversionError(f"{spec.architecture}: hidden_act={config.hidden_act!r} is not supported")
    yarn_parameters(config)
    return target


def native_config(config: MiniMindConfig, target: str, dtype: torch.dtype | None = None) -> PreTrainedConfig:
    """The transformers config of `target` that computes what `config` computes."""
    spec = TARGETS[target]
    kwargs = {
        "architectures": [spec.architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": dict(config.rope_parameters),
        "attention_dropout": 0.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    if dtype is not None:
        kwargs["dtype"] = str(dtype).removeprefix("torch.")
    if target == "llama":
        kwargs |= {"intermediate_size": config.intermediate_size, "attention_bias": False, "mlp_bias": False}
    elif target == "qwen3":
        kwargs |= {"intermediate_size": config.intermediate_size, "attention_bias": False, "use_sliding_window": False}
    else:
        width = config.moe_intermediate_size * (1 + config.num_shared_experts)
        kwargs |= {"num_experts_per_tok": config.num_experts_per_tok, "router_aux_loss_coef": 0.0}
        if target == "qwen3_moe":
            kwargs |= {
                "intermediate_size": width,
                "moe_intermediate_size": width,
                "num_experts": config.num_experts,
                "norm_topk_prob": config.norm_topk_prob,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [],
                "attention_bias": False,
                "use_sliding_window": False,
            }
        else:
            kwargs |= {
                "intermediate_size": width,
                "num_local_experts": config.num_experts,
                "router_jitter_noise": 0.0,
                "sliding_window": None,
            }
    return spec.config_class(**kwargs)


def native_state_dict(
    config: MiniMindConfig, state_dict: dict[str, torch.Tensor], target: str
) -> dict[str, torch.Tensor]:
    """Rename (and for MoE fold and re-key) a checked MiniMind state dict into `target`'s on-disk names."""
    spec = TARGETS[target]
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if spec.moe and ".mlp." in name:
            continue
        out[name] = tensor
    if spec.moe:
        for layer in range(config.num_hidden_layers):
            prefix = f"model.layers.{layer}."
            out[prefix + spec.router] = state_dict[prefix + "mlp.gate.weight"]
            for e, projections in enumerate(folded_experts(config, state_dict, layer)):
                for proj, tensor in zip(("gate_proj", "up_proj", "down_proj"), projections):
                    out[prefix + spec.experts[proj].format(e=e)] = tensor
    return out


def export_native(
    src,
    dst: str | os.PathLike,
    target: str = "auto",
    dtype: torch.dtype | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> Path:
    """Write `src` (a MiniMind folder or model) as a native transformers/vLLM folder at `dst`.

    Args:
        src: MiniMind folder or `MiniMindForCausalLM`.
        dst: output folder (written to a temporary folder next to it and renamed when complete).
        target: `"auto"` or one of `TARGETS` (`llama`, `qwen3`, `qwen3_moe`, `mixtral`).
        dtype: weight dtype on disk; defaults to the checkpoint's.
        tokenizer: a tokenizer (saved with `save_pretrained`) or a folder to copy tokenizer files from; defaults to
            the tokenizer files of a source folder.
        overwrite: replace an existing `dst`.

    Returns:
        The output folder.

    Raises:
        ConversionError: when `target` cannot represent the model exactly, or the checkpoint is inconsistent.
    """
    config, state_dict, folder = resolve_source(src)
    target = choose_target(config, target)
    weights = native_state_dict(config, state_dict, target)
    dtype = dtype or state_dict["model.embed_tokens.weight"].dtype
    weights = {name: tensor.to(dtype).contiguous() for name, tensor in weights.items()}
    with atomic_output(dst, overwrite=overwrite) as out:
        out.mkdir()
        native_config(config, target, dtype).save_pretrained(out)
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
        write_tokenizer(out, tokenizer, folder)
        if not (out / "generation_config.json").is_file():
            save_generation_config(config, out)
    return Path(dst)


def write_tokenizer(out: Path, tokenizer, folder: Path | None) -> None:
    """Save `tokenizer` (object or folder), else the source folder's tokenizer files, into `out`."""
    if tokenizer is None and folder is not None:
        copy_tokenizer_files(folder, out)
    elif isinstance(tokenizer, (str, os.PathLike)):
        if not copy_tokenizer_files(tokenizer, out):
            raise ConversionError(f"tokenizer: no tokenizer files in {tokenizer}")
    elif tokenizer is not None:
        tokenizer.save_pretrained(out)
