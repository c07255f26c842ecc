"""Exported GGUF files in the real llama.cpp (llama-cpp-python 0.3.36 built from source).

Tiny models (hidden 64), f32 with an f32 KV cache: prompt logits within 1e-4 of transformers (MiniMind model), 32
greedy tokens and their text identical, the same tokenization, for every GGUF arch (llama, llama-MoE with folded
shared experts, qwen3, qwen3moe) and for a YaRN model on a prompt past its original context. f16 / bf16: logits within
0.1, and every one of 32 greedy tokens within 0.2 of transformers' best logit for its prefix; q8_0: logits within 1.5,
every greedy token within 3.0 (a briefly trained tiny model has near-ties that reduced precision may flip).

At the presets' widths (minimind2-small 512, minimind2-moe 640, minimind3 768; two layers each, trained on a
repeating pattern so the greedy path has clear margins), where ggml picks other kernels and repacks Q8_0 blocks:
f16 and bf16 give the 32 greedy tokens transformers gives, and q8_0 agrees with transformers' argmax on >= 80% of the
prompt's positions.
"""

import ctypes

import numpy as np
import pytest
import torch
from convert_support import make_tokenizer, trained
from engine_support import LLAMACPP_SKIP_REASON, greedy_reference

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.converters import export_gguf
from tests.utils import briefly_trained, pattern_tokens

try:
    import llama_cpp
except ImportError:  # skipped per test, so the default suite (which deselects the marker) reports no skip
    llama_cpp = None
pytestmark = pytest.mark.llamacpp


@pytest.fixture(autouse=True)
def _needs_llama_cpp():
    if llama_cpp is None:
        pytest.skip(LLAMACPP_SKIP_REASON)


STEPS = 32
CASES = {
    "dense": ("dense", False, "llama"),
    "qk_norm": ("qk_norm", False, "qwen3"),
    "moe_top1": ("moe_top1", False, "qwen3moe"),
    "moe_shared": ("moe_shared", False, "llama"),
    "dense_yarn": ("dense", True, "llama"),
}


def _prompt(yarn: bool) -> list[int]:
    ids = make_tokenizer()("hello world the weather today is sunny and 你好")["input_ids"]
    # YaRN: a 100-token prompt, past the original 64-token context.
    return (ids * 20)[:100] if yarn else ids


def _greedy(llm, prompt: list[int], steps: int) -> list[int]:
    """Step-by-step argmax: compares the model, not llama.cpp's sampler chain."""
    llm.reset()
    llm.eval(prompt)
    tokens = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    return tokens


def _detokenize(llm, tokens: list[int]) -> str:
    """llama.cpp's own detokenizer with a buffer large enough for every token: llama-cpp-python's `detokenize` uses
    32 bytes and silently drops longer tokens (2-3% of MiniMind's 6400 tokens are longer)."""
    buffer = ctypes.create_string_buffer(1024)
    pieces = []
    for token in tokens:
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buffer, len(buffer), 0, False)
        pieces.append(buffer.raw[:n])
    return b"".join(pieces).decode("utf-8", errors="replace")


@pytest.fixture
def run_gguf(tmp_path):
    opened = []

    def run(case: str, outtype: str):
        variant, yarn, _ = CASES[case]
        model = trained(variant, yarn=yarn)
        path = export_gguf(model, tmp_path / f"{case}-{outtype}.gguf", outtype=outtype, tokenizer=make_tokenizer())
        # llama.cpp keeps the KV cache in f16 by default (~3e-3 logit error); the f32 check uses an f32 cache.
        cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if outtype == "f32" else {}
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2, verbose=False, **cache)
        opened.append(llm)
        prompt = _prompt(yarn)
        llm.eval(prompt)
        logits = np.array(llm.scores[: len(prompt)])
        with torch.no_grad():
            reference = model(torch.tensor([prompt])).logits[0].numpy()
        return model, llm, prompt, logits, reference

    yield run
    for llm in opened:
        llm.close()


@pytest.mark.parametrize("case", list(CASES))
def test_f32_logits_tokens_and_text_match(case, run_gguf, record_property):
    model, llm, prompt, logits, reference = run_gguf(case, "f32")
    assert llm.metadata["general.architecture"] == CASES[case][2]
    tokenizer = make_tokenizer()
    for text in ["hello world 你好", "<|im_start|>user\n天气<|im_end|>\n", " two  spaces\nand <think>"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"]
    diff = float(np.abs(logits - reference).max())
    record_property("max_logit_diff", diff)
    assert diff <= 1e-4  # the issue asks for 5e-3; with an f32 KV cache llama.cpp lands near 3e-6
    expected, _ = greedy_reference(model, prompt, STEPS)
    tokens = _greedy(llm, prompt, STEPS)
    assert tokens == expected
    assert _detokenize(llm, tokens) == tokenizer.decode(expected)


# Reduced precision: logits within `logits` of transformers on the prompt, and every greedy token llama.cpp picks is
# within `gap` of the best transformers logit for that prefix (2x the logit bound: an exact pick up to rounding).
BOUNDS = {"f16": {"logits": 0.1, "gap": 0.2}, "bf16": {"logits": 0.1, "gap": 0.2}, "q8_0": {"logits": 1.5, "gap": 3.0}}


@pytest.mark.parametrize("outtype", list(BOUNDS))
@pytest.mark.parametrize("case", list(CASES))
def test_reduced_precision_variants_load_and_stay_close(case, outtype, run_gguf, record_property):
    model, llm, prompt, logits, reference = run_gguf(case, outtype)
    tokens = _greedy(llm, prompt, STEPS)
    with torch.no_grad():
        # Transformers' logits along llama.cpp's own greedy path: position i predicts tokens[i].
        path = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].numpy()
    gap = float((path.max(-1) - path[np.arange(STEPS), tokens]).max())
    diff = float(np.abs(logits - reference).max())
    expected, _ = greedy_reference(model, prompt, STEPS)
    record_property("max_logit_diff", diff)
    record_property("argmax_agreement", float((logits.argmax(-1) == reference.argmax(-1)).mean()))
    record_property("greedy_gap", gap)
    record_property(
        "greedy_tokens_identical", next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), STEPS)
    )
    assert diff < BOUNDS[outtype]["logits"]
    assert gap <= BOUNDS[outtype]["gap"]


# Preset widths at two layers: (preset, GGUF arch).
WIDE = {"minimind2-small": "llama", "minimind2-moe": "llama", "minimind3": "qwen3"}


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("preset", list(WIDE))
def test_preset_widths_keep_greedy_tokens_and_argmax(preset, outtype, tmp_path, record_property):
    vocab = len(make_tokenizer())
    torch.manual_seed(0)
    config = MiniMindConfig.from_preset(preset, num_hidden_layers=2, vocab_size=vocab)
    model = briefly_trained(MiniMindForCausalLM(config).eval(), steps=30)
    path = export_gguf(model, tmp_path / f"{preset}-{outtype}.gguf", outtype=outtype, tokenizer=make_tokenizer())
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == WIDE[preset]
        prompt = pattern_tokens(40, vocab_size=vocab).tolist()
        llm.eval(prompt)
        logits = np.array(llm.scores[: len(prompt)])
        tokens = _greedy(llm, prompt, STEPS)
    finally:
        llm.close()
    with torch.no_grad():
        reference = model(torch.tensor([prompt])).logits[0].numpy()
    expected, _ = greedy_reference(model, prompt, STEPS)
    agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    record_property("argmax_agreement", agreement)
    record_property("max_logit_diff", float(np.abs(logits - reference).max()))
    if outtype == "q8_0":
        assert agreement >= 0.8
    else:
        assert tokens == expected
