"""Shared pieces of the converters: one error type, atomic outputs, reading a MiniMind folder and checking a state
dict against a config tensor by tensor."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from ..configuration_minimind import MiniMindConfig


class ConversionError(ValueError):
    """A checkpoint cannot be converted: names what is wrong (tensor, shape, config field) and why."""


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only if the block finishes.

    Works for a file or a folder (the caller decides what to create at the yielded path). A failed conversion leaves
    no partial output behind and an existing `target` untouched.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ConversionError(f"output: {target} already exists (pass overwrite=True / --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = workdir / target.name
    try:
        yield staged
        if not staged.exists():
            raise ConversionError(f"output: the converter produced nothing at {staged}")
        if target.exists():
            # Move the old output aside first: a folder cannot be renamed over a non-empty folder.
            old = workdir / ".replaced"
            os.replace(target, old)
        os.replace(staged, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def save_generation_config(config, out: str | os.PathLike) -> None:
    """Write the `generation_config.json` of a saved folder: `config`'s BOS, EOS and pad ids."""
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)


def load_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a saved folder: `model.safetensors`, a sharded safetensors index, or `pytorch_model.bin`
    (read with `weights_only=True`)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(folder / shard))
        return state_dict
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as error:  # a pickled object (code to run) is refused by weights_only, never executed
            raise ConversionError(
                f"weights: {folder / 'pytorch_model.bin'} is not a weights-only PyTorch state dict ({error})"
            ) from error
    raise ConversionError(f"weights: no model.safetensors, safetensors index or pytorch_model.bin in {folder}")


def expected_shapes(config: MiniMindConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a MiniMind checkpoint of `config` holds, with its shape (`lm_head.weight` included)."""
    hidden, head_dim = config.hidden_size, config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden), "model.norm.weight": (hidden,)}
    shapes["lm_head.weight"] = (config.vocab_size, hidden)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (config.num_attention_heads * head_dim, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (config.num_key_value_heads * head_dim, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (config.num_key_value_heads * head_dim, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, config.num_attention_heads * head_dim)
        if config.use_qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (head_dim,)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        mlps = {"mlp.": config.intermediate_size}
        if config.num_experts:
            shapes[p + "mlp.gate.weight"] = (config.num_experts, hidden)
            width = config.moe_intermediate_size
            mlps = {f"mlp.experts.{e}.": width for e in range(config.num_experts)}
            mlps |= {f"mlp.shared_experts.{s}.": width for s in range(config.num_shared_experts)}
        for prefix, width in mlps.items():
            shapes[p + prefix + "gate_proj.weight"] = (width, hidden)
            shapes[p + prefix + "up_proj.weight"] = (width, hidden)
            shapes[p + prefix + "down_proj.weight"] = (hidden, width)
    return shapes


def check_state_dict(state_dict: dict[str, torch.Tensor], config: MiniMindConfig) -> dict[str, torch.Tensor]:
    """Validate `state_dict` against `config` and return it with `lm_head.weight` filled in when tied.

    Raises:
        ConversionError: naming every missing or unexpected tensor and every shape mismatch.
    """
    state_dict = dict(state_dict)
    if "lm_head.weight" not in state_dict and config.tie_word_embeddings and "model.embed_tokens.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
    shapes = expected_shapes(config)
    problems = [f"missing tensor {name} {list(shape)}" for name, shape in shapes.items() if name not in state_dict]
    problems += [f"unexpected tensor {name} {list(t.shape)}" for name, t in state_dict.items() if name not in shapes]
    problems += [
        f"shape mismatch for {name}: checkpoint {list(state_dict[name].shape)}, config expects {list(shape)}"
        for name, shape in shapes.items()
        if name in state_dict and tuple(state_dict[name].shape) != shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise ConversionError(f"checkpoint does not match the config: {shown}")
    return state_dict


def load_minimind(folder: str | os.PathLike) -> tuple[MiniMindConfig, dict[str, torch.Tensor]]:
    """Config and checked state dict (lm_head filled in when tied) of a MiniMind folder, without building a model."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConversionError(f"config: no config.json in {folder}")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "minimind":
        raise ConversionError(
            f"config: unknown architecture model_type={model_type!r} in {folder / 'config.json'}; the converters "
            "read MiniMind folders (model_type 'minimind'); convert upstream checkpoints with convert/upstream_to_hf.py"
        )
    config = MiniMindConfig.from_pretrained(folder)
    return config, check_state_dict(load_state_dict(folder), config)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the tokenizer, chat template and generation config files that exist in `src`; return their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def describe_model(config: MiniMindConfig) -> str:
    """Short description used in error messages: 'dense', 'qk-norm MoE 4 experts top-2 + 1 shared', ..."""
    parts = ["qk-norm" if config.use_qk_norm else "no qk-norm"]
    if config.num_experts:
        parts.append(f"MoE {config.num_experts} experts top-{config.num_experts_per_tok}")
        if config.num_shared_experts:
            parts.append(f"+ {config.num_shared_experts} shared")
        parts.append(f"norm_topk_prob={config.norm_topk_prob}")
    else:
        parts.append("dense")
    return ", ".join(parts)


def resolve_source(src) -> tuple[MiniMindConfig, dict[str, torch.Tensor], Path | None]:
    """Accept a MiniMind folder or an in-memory `MiniMindForCausalLM`; return (config, checked state dict, folder)."""
    if isinstance(src, (str, os.PathLike)):
        config, state_dict = load_minimind(src)
        return config, state_dict, Path(src)
    if not isinstance(getattr(src, "config", None), MiniMindConfig):
        raise ConversionError(f"source: expected a MiniMind folder or MiniMindForCausalLM, got {type(src).__name__}")
    state_dict = {name: tensor.detach() for name, tensor in src.state_dict().items()}
    return src.config, check_state_dict(state_dict, src.config), None


def check_moe_export(config: MiniMindConfig, target: str, always_renormalises: bool) -> None:
    """Refuse MoE layouts `target` cannot compute exactly.

    Args:
        config: the MiniMind config.
        target: target name for the message.
        always_renormalises: whether the target engine always renormalises the top-k routing weights (Mixtral,
            llama.cpp's llama/qwen3moe) rather than following `norm_topk_prob`.
    """
    if not config.num_experts:
        return
    if config.num_shared_experts and not config.norm_topk_prob:
        raise ConversionError(
            f"{target} cannot represent this model exactly ({describe_model(config)}): it has no shared expert, and "
            "folding the shared expert into every routed expert is exact only when the top-k routing weights sum to "
            "1 (norm_topk_prob=True)"
        )
    if always_renormalises and not config.norm_topk_prob:
        raise ConversionError(
            f"{target} cannot represent this model exactly ({describe_model(config)}): it always renormalises the "
            "top-k routing weights, but this model uses the raw softmax weights (norm_topk_prob=False)"
        )
    if config.hidden_act != "silu":
        raise ConversionError(f"{target}: hidden_act={config.hidden_act!r} is not supported (SwiGLU with silu only)")


def folded_experts(
    config: MiniMindConfig, state_dict: dict[str, torch.Tensor], layer: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(gate [I', H], up [I', H], down [H, I']) of every routed expert of `layer`, shared experts folded in.

    With renormalised top-k weights w (sum 1), sum_i w_i E_i(x) + S(x) = sum_i w_i (E_i(x) + S(x)), and E_i + S is
    one SwiGLU FFN whose intermediate units are E_i's followed by S's: gate and up rows are concatenated and down
    columns are concatenated, so I' = (1 + num_shared) * moe_intermediate_size. Callers check `check_moe_export`.
    """
    p = f"model.layers.{layer}.mlp."
    shared = [f"{p}shared_experts.{s}." for s in range(config.num_shared_experts)]
    experts = []
    for e in range(config.num_experts):
        parts = [f"{p}experts.{e}.", *shared]
        experts.append(
            (
                torch.cat([state_dict[q + "gate_proj.weight"] for q in parts], dim=0),
                torch.cat([state_dict[q + "up_proj.weight"] for q in parts], dim=0),
                torch.cat([state_dict[q + "down_proj.weight"] for q in parts], dim=1),
            )
        )
    return experts


def yarn_parameters(config: MiniMindConfig) -> dict | None:
    """The YaRN part of `config.rope_parameters` (None for default RoPE); refuses other scaling types."""
    rope = config.rope_parameters or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        return None
    if rope_type != "yarn":
        raise ConversionError(f"rope_parameters.rope_type={rope_type!r}: only 'default' and 'yarn' can be exported")
    return rope
