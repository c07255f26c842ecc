"""MiniMind -> GGUF for llama.cpp (and ollama), written with the `gguf` package.

| MiniMind model          | GGUF arch  | notes                                                                      |
|-------------------------|------------|----------------------------------------------------------------------------|
| dense                   | `llama`    | `attn_q` / `attn_k` permuted from rotate-half to llama.cpp's interleaved RoPE |
| MoE without QK-norm     | `llama`    | Mixtral-style stacked experts, shared experts folded in                    |
| dense + QK-norm         | `qwen3`    | NEOX (rotate-half) RoPE: no permutation                                    |
| MoE + QK-norm           | `qwen3moe` | stacked experts, shared experts folded in                                  |

llama.cpp always renormalises top-k routing weights for these archs, so MoE models with `norm_topk_prob=False` are
refused. YaRN: llama.cpp multiplies attention by its own magnitude 1 + 0.1 ln(factor); `rope.scaling.attn_factor`
is written so that the product equals the model's `attention_factor` (1.0 for MiniMind).
"""

import json
import math
import os
from pathlib import Path

import gguf
import torch
from tokenizers import Tokenizer

from ..configuration_minimind import MiniMindConfig
from .common import ConversionError, atomic_output, check_moe_export, folded_experts, resolve_source, yarn_parameters

# MiniMind name -> GGUF name; `{i}` is the layer. Experts and the tied lm_head are handled in `gguf_tensors`.
TENSOR_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
    "model.layers.{i}.mlp.gate.weight": "blk.{i}.ffn_gate_inp.weight",
}
# Stacked experts [E, rows, cols], from the (gate, up, down) projections of `folded_experts`.
EXPERT_TENSORS = ("blk.{i}.ffn_gate_exps.weight", "blk.{i}.ffn_up_exps.weight", "blk.{i}.ffn_down_exps.weight")

# Output type -> (tensor type of 2-D weights, GGUF file type).
OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def gguf_arch(config: MiniMindConfig) -> str:
    """GGUF architecture for `config`; refuses MoE layouts llama.cpp cannot compute exactly."""
    arch = ("qwen3moe" if config.num_experts else "qwen3") if config.use_qk_norm else "llama"
    check_moe_export(config, f"GGUF arch {arch!r} (llama.cpp)", always_renormalises=True)
    return arch


def permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k projection rows from rotate-half pairs (i, i + d/2) to llama.cpp's interleaved pairs (2i, 2i+1).

    weight [n_head * head_dim, hidden] -> [n_head, 2, head_dim/2, hidden] -> swap the middle axes -> same shape.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(config: MiniMindConfig, state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """GGUF-named float32 tensors in llama.cpp's layouts."""
    out = {}
    for layer_name, template in TENSOR_MAP.items():
        for i in range(config.num_hidden_layers) if "{i}" in layer_name else [None]:
            name = layer_name.format(i=i)
            if name not in state_dict or (name == "lm_head.weight" and config.tie_word_embeddings):
                continue
            if config.num_experts and ".mlp." in name and not name.endswith("mlp.gate.weight"):
                continue
            tensor = state_dict[name].float()
            if arch == "llama" and name.endswith("q_proj.weight"):
                tensor = permute_rotary(tensor, config.num_attention_heads)
            elif arch == "llama" and name.endswith("k_proj.weight"):
                tensor = permute_rotary(tensor, config.num_key_value_heads)
            out[template.format(i=i)] = tensor
    if config.num_experts:
        for i in range(config.num_hidden_layers):
            experts = folded_experts(config, state_dict, i)
            for k, template in enumerate(EXPERT_TENSORS):
                out[template.format(i=i)] = torch.stack([projections[k] for projections in experts]).float()
    return out


def _tokenizer_source(tokenizer, folder: Path | None) -> tuple[Tokenizer, str | None]:
    """A `tokenizers.Tokenizer` and the chat template, from a tokenizer object, a folder, or the source folder."""
    if tokenizer is None:
        if folder is None:
            raise ConversionError("tokenizer: the source is an in-memory model; pass tokenizer= (object or folder)")
        tokenizer = folder
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if not (path / "tokenizer.json").is_file():
            raise ConversionError(f"tokenizer: no tokenizer.json in {path}")
        template = None
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "tokenizer_config.json").is_file():
            template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
        return Tokenizer.from_file(str(path / "tokenizer.json")), template
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConversionError(f"tokenizer: {type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return backend, template


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, config: MiniMindConfig, template: str | None):
    """Byte-level BPE as llama.cpp's `gpt2` model with the `gpt-2` pre-tokenizer; vocab padded to the model's."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ConversionError(f"tokenizer: model type {model.get('type')!r}; GGUF export supports byte-level BPE only")
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    if len(vocab) > config.vocab_size or max(vocab.values()) >= config.vocab_size:
        raise ConversionError(
            f"tokenizer: {len(vocab)} tokens (max id {max(vocab.values())}) do not fit the model's vocab_size "
            f"{config.vocab_size}"
        )
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: text for text, i in vocab.items()}
    tokens, types = [], []
    # llama.cpp needs exactly one token per embedding row: unused rows become [PAD{i}] like its own converter.
    for i in range(config.vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    # MiniMind's chat template writes <|im_start|> itself; an automatic BOS would double it.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if template:
        writer.add_chat_template(template)


def add_hparams(writer: gguf.GGUFWriter, config: MiniMindConfig, arch: str):
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if config.num_experts:
        width = config.moe_intermediate_size * (1 + config.num_shared_experts)
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        # llama's MoE reads the expert width from feed_forward_length, qwen3moe from expert_feed_forward_length.
        writer.add_feed_forward_length(width)
        if arch == "qwen3moe":
            writer.add_expert_feed_forward_length(width)
    else:
        writer.add_feed_forward_length(config.intermediate_size)
    yarn = yarn_parameters(config)
    if yarn:
        if yarn.get("mscale") or yarn.get("mscale_all_dim"):
            raise ConversionError("rope_parameters: YaRN mscale/mscale_all_dim cannot be expressed in GGUF")
        factor = float(yarn["factor"])
        llama_cpp_mscale = 1.0 + 0.1 * math.log(factor)
        attention_factor = yarn.get("attention_factor")
        attention_factor = llama_cpp_mscale if attention_factor is None else float(attention_factor)
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(int(yarn["original_max_position_embeddings"]))
        writer.add_rope_scaling_yarn_beta_fast(float(yarn.get("beta_fast", 32.0)))
        writer.add_rope_scaling_yarn_beta_slow(float(yarn.get("beta_slow", 1.0)))
        writer.add_rope_scaling_attn_factors(attention_factor / llama_cpp_mscale)


def export_gguf(
    src,
    dst: str | os.PathLike,
    outtype: str = "f16",
    tokenizer=None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `src` (a MiniMind folder or model) as a GGUF file.

    Args:
        src: MiniMind folder or `MiniMindForCausalLM`.
        dst: output `.gguf` path (written to a temporary file next to it and renamed when complete).
        outtype: `f32`, `f16`, `bf16` or `q8_0` for the 2-D weights; norms and routers stay f32 (as in llama.cpp's
            own converter), and a weight whose rows are not a multiple of 32 falls back to f16 under q8_0.
        tokenizer: tokenizer object or folder; defaults to the source folder. Its chat template is embedded.
        name: `general.name`; defaults to the source folder's name.
        overwrite: replace an existing `dst`.

    Raises:
        ConversionError: unsupported model layout, tokenizer or outtype.
    """
    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype: unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    config, state_dict, folder = resolve_source(src)
    arch = gguf_arch(config)
    backend, template = _tokenizer_source(tokenizer, folder)
    qtype, file_type = OUTTYPES[outtype]
    tensors = gguf_tensors(config, state_dict, arch)
    with atomic_output(dst, overwrite=overwrite) as out:
        writer = gguf.GGUFWriter(str(out), arch)
        writer.add_name(name or (folder.name if folder else "MiniMind"))
        writer.add_file_type(file_type)
        add_hparams(writer, config, arch)
        add_tokenizer(writer, backend, config, template)
        for tensor_name, tensor in tensors.items():
            data = tensor.numpy()
            tensor_type = qtype
            if data.ndim == 1 or tensor_name.endswith("ffn_gate_inp.weight"):
                tensor_type = gguf.GGMLQuantizationType.F32
            elif tensor_type == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
                tensor_type = gguf.GGMLQuantizationType.F16
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, tensor_type), raw_dtype=tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(dst)
