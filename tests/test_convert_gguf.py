"""MiniMind -> GGUF: transformers' own GGUF loader reads llama-arch files back exactly; metadata for llama.cpp.

transformers' loader handles dense `llama` files only (it ignores `key_length` and expert tensors), so qwen3,
qwen3moe and MoE-llama files are checked against llama.cpp itself in test_engines_llamacpp.py.
"""

import math

import gguf
import pytest
import torch
from convert_support import PROMPTS, make_tokenizer, max_logit_diff, save_folder, trained
from transformers import AutoModelForCausalLM, AutoTokenizer

from minimind_hf.converters import ConversionError, export_gguf


def _fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_llama_gguf_round_trip_through_transformers(tmp_path):
    model = trained("dense")
    path = export_gguf(save_folder(model, tmp_path / "src"), tmp_path / "gguf" / "model-f32.gguf", outtype="f32")
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = make_tokenizer()
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [*PROMPTS, "<|im_start|>user\n你好<|im_end|>\n<think>\n\n</think>", " leading  spaces\tand\nnewlines!"]
    for text in texts:
        assert gguf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        assert max_logit_diff(model(ids).logits, loaded(ids).logits) == 0.0


@pytest.mark.parametrize(("outtype", "bound"), [("f16", 0.05), ("bf16", 0.3), ("q8_0", 0.3)])
def test_reduced_precision_llama_gguf_stays_close(outtype, bound, tmp_path):
    model = trained("dense")
    path = export_gguf(model, tmp_path / f"model-{outtype}.gguf", outtype=outtype, tokenizer=make_tokenizer())
    _, tensors = _fields(path)
    expected = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[outtype]
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == expected
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = make_tokenizer()(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        reference, logits = model(ids).logits, loaded(ids).logits
    assert max_logit_diff(reference, logits) < bound
    assert (reference.argmax(-1) == logits.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize(
    ("variant", "arch", "experts"),
    [("qk_norm", "qwen3", None), ("moe_top1", "qwen3moe", 64), ("moe_shared", "llama", 128)],
)
def test_arch_and_expert_layout(variant, arch, experts, tmp_path):
    model = trained(variant)
    fields, tensors = _fields(export_gguf(model, tmp_path / "m.gguf", outtype="f32", tokenizer=make_tokenizer()))
    assert fields["general.architecture"] == arch
    if experts is None:
        assert "blk.0.attn_q_norm.weight" in tensors
        return
    # Stacked [E, I', H] (GGUF lists dims fastest first); shared experts folded in widen I' to 2 x 64.
    assert list(tensors["blk.1.ffn_gate_exps.weight"].shape) == [64, experts, 4]
    assert list(tensors["blk.1.ffn_down_exps.weight"].shape) == [experts, 64, 4]
    assert tensors["blk.1.ffn_gate_inp.weight"].tensor_type.name == "F32"
    assert fields[f"{arch}.expert_count"] == 4
    assert fields[f"{arch}.expert_used_count"] == model.config.num_experts_per_tok


def test_tokenizer_and_yarn_metadata(tmp_path):
    model = trained("dense", yarn=True)
    fields, tensors = _fields(export_gguf(model, tmp_path / "m.gguf", outtype="f32", tokenizer=make_tokenizer()))
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert fields["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == make_tokenizer().chat_template
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert fields["llama.rope.scaling.type"] == "yarn"
    assert fields["llama.rope.scaling.factor"] == 4.0
    assert fields["llama.rope.scaling.original_context_length"] == 64
    # llama.cpp multiplies by its own 1 + 0.1 ln(factor); MiniMind's attention_factor is 1.0.
    assert fields["llama.rope.scaling.attn_factor"] == pytest.approx(1 / (1 + 0.1 * math.log(4.0)), rel=1e-6)


def test_gguf_refusals(tmp_path):
    from tests.utils import tiny_model

    with pytest.raises(ConversionError, match="norm_topk_prob=False"):
        export_gguf(tiny_model("moe_top1", norm_topk_prob=False), tmp_path / "a.gguf", tokenizer=make_tokenizer())
    with pytest.raises(ConversionError, match="do not fit the model's vocab_size 100"):
        export_gguf(tiny_model("dense", vocab_size=100), tmp_path / "b.gguf", tokenizer=make_tokenizer())
    with pytest.raises(ConversionError, match="unknown outtype 'q4_k'"):
        export_gguf(tiny_model("dense"), tmp_path / "c.gguf", outtype="q4_k", tokenizer=make_tokenizer())
    with pytest.raises(ConversionError, match="pass tokenizer="):
        export_gguf(tiny_model("dense"), tmp_path / "d.gguf")
    assert list(tmp_path.iterdir()) == []


def test_padded_vocabulary(tmp_path):
    from tests.utils import tiny_model

    model = tiny_model("dense", vocab_size=6464)
    fields, _ = _fields(export_gguf(model, tmp_path / "m.gguf", outtype="f32", tokenizer=make_tokenizer()))
    assert len(fields["tokenizer.ggml.tokens"]) == 6464
    assert fields["tokenizer.ggml.tokens"][-1] == "[PAD6463]"
    assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED
