"""Helpers shared by the converter and engine tests: the shipped tokenizer, briefly trained tiny models, folders.

Models get exactly the tokenizer's vocabulary size, so every generated id is a real token and greedy text comparisons
mean something.
"""

import functools
from pathlib import Path

import torch

from minimind_hf.tokenization import load_tokenizer
from tests.utils import briefly_trained, tiny_model


@functools.lru_cache(maxsize=1)
def make_tokenizer():
    """The tokenizer shipped in the package (byte-level BPE, 6400 tokens, MiniMind's ChatML template)."""
    return load_tokenizer()


# YaRN with MiniMind's settings (attention_factor 1.0) at a scale tiny models reach: prompts past 64 tokens are
# beyond the original context.
YARN = {
    "rope_type": "yarn",
    "rope_theta": 1e6,
    "factor": 4.0,
    "original_max_position_embeddings": 64,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}


@functools.cache
def trained(variant: str, yarn: bool = False, steps: int = 30):
    """A briefly trained tiny model of `variant` (optionally with `YARN`) with the tokenizer's vocabulary, cached per
    process."""
    overrides = {"vocab_size": len(make_tokenizer())}
    if yarn:
        overrides |= {"rope_parameters": dict(YARN), "max_position_embeddings": 256}
    return briefly_trained(tiny_model(variant, **overrides), steps=steps)


def save_folder(model, path: Path) -> Path:
    """Save `model` with the test tokenizer as a MiniMind folder."""
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def max_logit_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


PROMPTS = [
    "hello world the weather today",
    "你好 世界 今天 天气",
    "please answer the question with care and",
]
