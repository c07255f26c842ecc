"""Upstream MiniMind checkpoints -> MiniMind folders (safetensors, config with `auto_map` and remote code,
tokenizer with chat template, generation config).

Two inputs:

- a native `.pth` state dict (`full_sft_512.pth`, `pretrain_640_moe.pth`, ...), read with `weights_only=True`; the
  architecture comes from a preset or is inferred from tensor shapes (`infer_config`);
- a published upstream HF folder (`config.json` with upstream's field names and `auto_map` to upstream's files,
  `model.safetensors` or `pytorch_model.bin`, upstream's tokenizer).

Upstream checkpoints were trained with upstream's tokenizer, not this package's: pass upstream's tokenizer folder.
"""

import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..chat_templates import get_chat_template
from ..configuration_minimind import (
    MINIMIND3_UPSTREAM_AUX_COEF,
    PRESETS,
    UPSTREAM_YARN_PARAMETERS,
    MiniMindConfig,
    translate_upstream_config,
)
from ..modeling_minimind import MiniMindForCausalLM
from .common import ConversionError, atomic_output, check_state_dict, load_state_dict, save_generation_config

# Wrappers training code leaves on state-dict keys: torch.compile and DistributedDataParallel.
STRIP_PREFIXES = ("_orig_mod.", "module.")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
# Upstream's defaults for what shapes cannot tell (MiniMind2 vs minimind-3 is told apart by QK-norm / shared experts).
MINIMIND2_DEFAULTS = {"rms_norm_eps": 1e-5}
MINIMIND3_DEFAULTS = {"rms_norm_eps": 1e-6}
# Upstream's MoE defaults in its own config.json names, read through `translate_upstream_config`.
MINIMIND2_MOE_DEFAULTS = {"num_experts_per_tok": 2, "aux_loss_alpha": 0.01, "seq_aux": True}
MINIMIND3_MOE_DEFAULTS = {
    "use_moe": True,
    "num_experts_per_tok": 1,
    "router_aux_loss_coef": MINIMIND3_UPSTREAM_AUX_COEF,
}
DEFAULT_NUM_HEADS = 8


def load_upstream_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an upstream `.pth` state dict safely (`weights_only=True`), unwrapping `{"model": ...}` /
    `{"state_dict": ...}` and torch.compile / DDP key prefixes."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConversionError(f"checkpoint: {path} is not a weights-only PyTorch state dict ({error})") from error
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"checkpoint: {path} does not hold a state dict")
    state_dict = {}
    for name, tensor in obj.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"checkpoint: entry {name!r} of {path} is a {type(tensor).__name__}, not a tensor")
        for prefix in STRIP_PREFIXES:
            name = name.removeprefix(prefix)
        state_dict[name] = tensor
    return state_dict


def _shape(state_dict: dict[str, torch.Tensor], name: str) -> tuple[int, ...]:
    if name not in state_dict:
        raise ConversionError(
            f"unknown architecture: tensor {name} is missing, so this is not a MiniMind checkpoint (first keys: "
            f"{', '.join(list(state_dict)[:4])})"
        )
    return tuple(state_dict[name].shape)


def infer_config(
    state_dict: dict[str, torch.Tensor],
    preset: str | None = None,
    num_attention_heads: int | None = None,
    **overrides,
) -> MiniMindConfig:
    """Architecture of an upstream state dict.

    From shapes: vocab and hidden size (embedding), layer count, QK-norm and head_dim (q_norm), intermediate sizes,
    routed and shared expert counts, tied lm_head. Not visible in shapes, taken from `preset` when given, else
    upstream's defaults: the query head count (exact when QK-norm gives head_dim; otherwise `num_attention_heads`,
    default 8 as in every upstream model), top-k (2 for MiniMind2-MoE with shared experts, 1 for minimind-3-MoE),
    RMSNorm eps (1e-5 MiniMind2, 1e-6 minimind-3), aux-loss settings, RoPE (theta 1e6, 32768 positions).

    Raises:
        ConversionError: the keys are not MiniMind's, or the preset / head count does not fit the shapes.
    """
    vocab_size, hidden_size = _shape(state_dict, "model.embed_tokens.weight")
    layers = {int(m.group(1)) for name in state_dict if (m := LAYER_KEY.match(name))}
    if not layers:
        raise ConversionError("unknown architecture: no model.layers.N.* tensors")
    num_layers = max(layers) + 1
    q_rows = _shape(state_dict, "model.layers.0.self_attn.q_proj.weight")[0]
    k_rows = _shape(state_dict, "model.layers.0.self_attn.k_proj.weight")[0]
    qk_norm = "model.layers.0.self_attn.q_norm.weight" in state_dict
    if preset and preset not in PRESETS:
        raise ConversionError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[preset]) if preset else {}

    if qk_norm:
        head_dim = _shape(state_dict, "model.layers.0.self_attn.q_norm.weight")[0]
        heads = q_rows // head_dim
        if num_attention_heads and num_attention_heads != heads:
            raise ConversionError(
                f"num_attention_heads: {num_attention_heads} given, but q_norm [{head_dim}] and q_proj [{q_rows}, ...] "
                f"mean {heads} heads"
            )
    else:
        heads = num_attention_heads or fields.get("num_attention_heads", DEFAULT_NUM_HEADS)
        if q_rows % heads:
            raise ConversionError(f"num_attention_heads: {heads} does not divide q_proj's {q_rows} rows")
        head_dim = q_rows // heads
    if k_rows % head_dim:
        raise ConversionError(f"k_proj: {k_rows} rows are not a multiple of head_dim {head_dim}")

    inferred = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": k_rows // head_dim,
        "head_dim": head_dim,
        "use_qk_norm": qk_norm,
    }
    defaults = dict(MINIMIND3_DEFAULTS if qk_norm else MINIMIND2_DEFAULTS)
    if "model.layers.0.mlp.gate.weight" in state_dict:
        num_experts = _shape(state_dict, "model.layers.0.mlp.gate.weight")[0]
        shared = {int(m.group(1)) for n in state_dict if (m := re.search(r"\.mlp\.shared_experts\.(\d+)\.", n))}
        width = _shape(state_dict, "model.layers.0.mlp.experts.0.gate_proj.weight")[0]
        inferred |= {
            "num_experts": num_experts,
            "num_shared_experts": len(shared),
            "moe_intermediate_size": width,
            "intermediate_size": width,
        }
        # As upstream configs load: minimind-3's coefficient (a loss summed over layers) is scaled to ours. The
        # translation's `use_qk_norm` and `num_hidden_layers` are overridden by the shapes' below.
        upstream_defaults = MINIMIND2_MOE_DEFAULTS if shared else MINIMIND3_MOE_DEFAULTS
        defaults |= translate_upstream_config({**upstream_defaults, "num_hidden_layers": num_layers})
    else:
        inferred |= {
            "num_experts": 0,
            "intermediate_size": _shape(state_dict, "model.layers.0.mlp.gate_proj.weight")[0],
        }
    lm_head = state_dict.get("lm_head.weight")
    embed = state_dict["model.embed_tokens.weight"]
    # Upstream saves tied weights as two equal fp16 tensors; a live (or meta) state dict holds the same tensor twice.
    inferred["tie_word_embeddings"] = (
        lm_head is None
        or lm_head is embed
        or (not lm_head.is_meta and lm_head.shape == embed.shape and torch.equal(lm_head, embed))
    )

    if preset:
        for key, value in inferred.items():
            if key in fields and fields[key] != value:
                raise ConversionError(
                    f"preset {preset!r}: {key}={fields[key]} but the checkpoint's tensors have {key}={value}"
                )
    return MiniMindConfig(**{**defaults, **fields, **inferred, **overrides})


def _load_tokenizer(tokenizer):
    if tokenizer is None:
        raise ConversionError(
            "tokenizer: upstream checkpoints were trained with upstream's tokenizer; pass its folder (tokenizer.json "
            "+ tokenizer_config.json), e.g. upstream's `model/` directory"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        if not (Path(tokenizer) / "tokenizer.json").is_file():
            raise ConversionError(f"tokenizer: no tokenizer.json in {tokenizer}")
        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def save_minimind_folder(
    config: MiniMindConfig,
    state_dict: dict[str, torch.Tensor],
    dst: str | os.PathLike,
    tokenizer,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Strictly load `state_dict` into `MiniMindForCausalLM(config)` and save a complete MiniMind folder.

    Args:
        dtype: weight dtype on disk; defaults to the checkpoint's (fp16 for upstream).
        tokenizer: tokenizer object or folder. Without a chat template it gets the package's MiniMind template.
    """
    state_dict = check_state_dict(state_dict, config)
    tokenizer = _load_tokenizer(tokenizer)
    if not tokenizer.chat_template:
        tokenizer.chat_template = get_chat_template()
    dtype = dtype or state_dict["model.embed_tokens.weight"].dtype
    model = MiniMindForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    model.to(dtype)
    with atomic_output(dst, overwrite=overwrite) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        save_generation_config(config, out)
    return Path(dst)


def convert_upstream_pth(
    pth: str | os.PathLike,
    dst: str | os.PathLike,
    tokenizer,
    preset: str | None = None,
    num_attention_heads: int | None = None,
    yarn: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Upstream `.pth` -> MiniMind folder.

    Args:
        pth: upstream state dict file.
        dst: output folder.
        tokenizer: upstream's tokenizer (folder or object).
        preset: a `PRESETS` name fixing what shapes cannot show; checked against the shapes.
        num_attention_heads: query heads when there is no QK-norm and no preset (default 8, as upstream).
        yarn: switch on upstream's inference-time YaRN (factor 16 over 2048 positions, attention_factor 1.0).
        dtype: weight dtype on disk (default: the checkpoint's, fp16 upstream).
    """
    state_dict = load_upstream_pth(pth)
    overrides = {}
    if yarn:
        yarn_dict = dict(UPSTREAM_YARN_PARAMETERS)
        overrides = {
            "rope_parameters": {**yarn_dict, "rope_theta": 1e6},
            "max_position_embeddings": int(yarn_dict["factor"] * yarn_dict["original_max_position_embeddings"]),
        }
    config = infer_config(state_dict, preset=preset, num_attention_heads=num_attention_heads, **overrides)
    return save_minimind_folder(config, state_dict, dst, tokenizer, dtype=dtype, overwrite=overwrite)


def convert_upstream_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Upstream HF folder (upstream `config.json`, weights, tokenizer) -> MiniMind folder with this package's remote
    code and full `auto_map`. The tokenizer defaults to the folder's own."""
    src = Path(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"config: no config.json in {src}")
    raw = json.loads(config_path.read_text())
    if raw.get("model_type") != "minimind":
        raise ConversionError(f"config: unknown architecture model_type={raw.get('model_type')!r} in {config_path}")
    for key in ("auto_map", "architectures", "transformers_version", "model_type"):
        raw.pop(key, None)
    try:
        config = MiniMindConfig(**raw)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"config: {config_path}: {error}") from error
    return save_minimind_folder(config, load_state_dict(src), dst, tokenizer or src, dtype=dtype, overwrite=overwrite)
