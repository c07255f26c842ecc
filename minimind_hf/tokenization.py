"""MiniMind's tokenizer: training a byte-level BPE, saving it as a transformers fast tokenizer, and loading the one
shipped in the package.

Token ids follow upstream: 0 `<|endoftext|>` (pad and unk), 1 `<|im_start|>` (bos), 2 `<|im_end|>` (eos). With
`reserved_tokens=True` (the shipped tokenizer) minimind-3's reserved single tokens follow as ordinary (non-special)
added tokens, so they survive `decode(skip_special_tokens=True)` and parsers can read them: 3 `<tool_call>`,
4 `</tool_call>`, 5 `<tool_response>`, 6 `</tool_response>`, 7 `<think>`, 8 `</think>`. Learned merges start at 9.
No normaliser and no post-processor: nothing is added automatically (no BOS), as upstream.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .chat_templates import RESPONSE_TEMPLATE, get_chat_template

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
RESERVED_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
DEFAULT_VOCAB_SIZE = 6400
MODEL_MAX_LENGTH = 32768

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shipped_tokenizer_path() -> Path:
    """Folder of the tokenizer shipped inside the package."""
    return Path(str(resources.files("minimind_hf") / "assets" / "tokenizer"))


def load_tokenizer(path: str | os.PathLike | None = None, **kwargs) -> PreTrainedTokenizerBase:
    """Loads a tokenizer folder with `AutoTokenizer` (the shipped one when `path` is `None`).

    Upstream MiniMind tokenizer folders (tokenizer.json + tokenizer_config.json with an inline chat template) load
    unchanged, as does any other transformers tokenizer folder.
    """
    return AutoTokenizer.from_pretrained(str(path or shipped_tokenizer_path()), **kwargs)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    reserved_tokens: bool = True,
    min_frequency: int = 2,
    chat_template: str | None = None,
    split_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer with the `tokenizers` library.

    Args:
        texts (`Iterable[str]`):
            Training texts; consumed once, never held in memory as a whole.
        vocab_size (`int`, *optional*, defaults to 6400):
            Final vocabulary size, special and reserved tokens included.
        reserved_tokens (`bool`, *optional*, defaults to `True`):
            Add minimind-3's reserved single tokens (`<tool_call>` ... `</think>`) at ids 3-8.
        min_frequency (`int`, *optional*, defaults to 2):
            Minimum pair frequency for a merge.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to the package's inference template.
        split_digits (`bool`, *optional*, defaults to `False`):
            Pre-tokenise every digit as its own token (as LLaMA and Qwen do), so a number has the same tokens wherever
            it stands (" 4821" in a question, "4821" inside JSON arguments); otherwise BPE merges digit runs, and the
            same number can split differently by context.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: bos `<|im_start|>`, eos `<|im_end|>`, pad and unk `<|endoftext|>`.
    """
    reserved = list(RESERVED_TOKENS) if reserved_tokens else []
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *reserved],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # The trainer registers every listed token as special; reserved tokens must stay visible in decoded text.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in reserved])
    for token_id, token in enumerate([*SPECIAL_TOKENS, *reserved]):
        if backend.token_to_id(token) != token_id:
            raise RuntimeError(f"{token} got id {backend.token_to_id(token)}, expected {token_id}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=chat_template or get_chat_template("inference"),
        response_template=RESPONSE_TEMPLATE if chat_template is None else None,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> Path:
    """Saves `tokenizer` as a transformers folder (tokenizer.json, tokenizer_config.json, chat_template.jinja).

    The files are written to a temporary folder first and moved into place, so a failure leaves no half-written
    tokenizer. `add_bos_token` / `add_eos_token` are written as `false` for tools that read them (GGUF converters).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:
        tokenizer.save_pretrained(staging)
        config_path = Path(staging) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update({"add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False})
        config_path.write_text(
            json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        for name in os.listdir(staging):
            os.replace(Path(staging) / name, out / name)
    return out


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "pre"):
            self._skip += 1
        elif tag in ("p", "br", "div", "li", "h1", "h2", "h3", "tr"):
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "pre") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        raw = handle.read()
    inner = path.with_suffix("") if path.suffix == ".gz" else path
    if inner.suffix in (".html", ".htm"):
        parser = _TextExtractor()
        parser.feed(raw)
        raw = "".join(parser.parts)
    if inner.suffix == ".jsonl":
        texts = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if "text" in record:
                texts.append(record["text"])
            for message in record.get("conversations", []):
                texts.append(message.get("content") or "")
        raw = "\n\n".join(texts)
    return raw


def _paragraphs(text: str) -> list[str]:
    """Blank-line (or fortune-file `%` line) separated paragraphs with hard line wraps undone and terminal colour
    codes removed (no space is inserted between Chinese lines)."""
    text = re.sub(r"(?m)^%$", "", _ANSI.sub("", text))
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        joined = lines[0]
        for line in lines[1:]:
            glue = "" if _CJK.match(joined[-1]) and _CJK.match(line[0]) else " "
            joined += glue + line
        paragraphs.append(joined)
    return paragraphs


def iter_text_files(
    paths: Iterable[str | os.PathLike], part: str = "train", heldout_fraction: float = 0.1
) -> Iterator[str]:
    """Yields paragraphs from plain-text, Markdown, HTML, JSONL (`text` / `conversations`) files, optionally gzipped.

    Each file's last `heldout_fraction` of paragraphs is its held-out part (`part="heldout"`), used to measure
    compression on text the tokenizer never saw; `part="train"` yields the rest, `part="all"` everything.
    """
    for path in paths:
        paragraphs = _paragraphs(_read_text(Path(path)))
        cut = len(paragraphs) - int(len(paragraphs) * heldout_fraction)
        yield from {"train": paragraphs[:cut], "heldout": paragraphs[cut:], "all": paragraphs}[part]


def is_chinese(text: str, threshold: float = 0.3) -> bool:
    """Whether at least `threshold` of the non-space characters are CJK ideographs."""
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and len(_CJK.findall(text)) / len(chars) >= threshold


def compression(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> dict[str, float]:
    """Characters per token, separately for Chinese and English/other texts (see [`is_chinese`])."""
    counts = {"zh": [0, 0], "en": [0, 0]}
    for text in texts:
        bucket = counts["zh" if is_chinese(text) else "en"]
        bucket[0] += len(text)
        bucket[1] += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return {lang: round(chars / tokens, 3) for lang, (chars, tokens) in counts.items() if tokens}
