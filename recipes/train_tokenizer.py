"""Train MiniMind's byte-level BPE tokenizer and save it as a transformers tokenizer folder.

The shipped tokenizer (minimind_hf/assets/tokenizer) was made with:

    apt-get install debian-reference-en debian-reference-zh-cn fortunes-zh   # real English and Chinese prose
    python recipes/train_tokenizer.py --config recipes/tiny/train_tokenizer.yaml \
        --output_dir minimind_hf/assets/tokenizer

CPU smoke run (curriculum text only, a few seconds):

    python recipes/train_tokenizer.py --output_dir /tmp/tok --text_files '[]' --vocab_size 1000

Arguments resolve as defaults < YAML `--config` < command line. Text files missing on this machine are skipped
with a warning, so the same YAML works where the Debian packages are not installed. Compression (characters per
token, Chinese and English) is printed for the held-out part of every text file and for the curriculum's held-out
evaluation files.
"""

import json
import logging
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from minimind_hf.curriculum import ensure_curriculum, iter_curriculum_text
from minimind_hf.tokenization import DEFAULT_VOCAB_SIZE, compression, iter_text_files, save_tokenizer, train_tokenizer
from minimind_hf.training import RecipeParser

logger = logging.getLogger(__name__)


@dataclass
class TokenizerArguments:
    """Arguments of the tokenizer recipe."""

    output_dir: str = field(
        metadata={"help": "Folder to write tokenizer.json, tokenizer_config.json and the chat template to."}
    )
    vocab_size: int = field(default=DEFAULT_VOCAB_SIZE, metadata={"help": "Vocabulary size, special tokens included."})
    reserved_tokens: bool = field(
        default=True,
        metadata={"help": "Add minimind-3's reserved single tokens (<tool_call> ... </think>) at ids 3-8."},
    )
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair frequency for a BPE merge."})
    split_digits: bool = field(
        default=False, metadata={"help": "Every digit its own token, so a number tokenises the same in any context."}
    )
    curriculum_seed: int | None = field(
        default=0,
        metadata={"help": "Seed of the embedded curriculum whose training text is included; null leaves it out."},
    )
    text_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra text files (.txt, .md, .html, .jsonl, optionally .gz); each file's tail is held out."
        },
    )
    text_repeats: int = field(
        default=1,
        metadata={"help": "How many times the extra text files are fed, to weigh real prose against the curriculum."},
    )
    heldout_fraction: float = field(default=0.1, metadata={"help": "Fraction of each text file kept out of training."})


def make_parser() -> RecipeParser:
    """The recipe's arguments (defaults < YAML `--config` < command line)."""
    return RecipeParser((TokenizerArguments,))


def main(args: TokenizerArguments) -> dict[str, dict[str, float]]:
    files = [f for f in args.text_files if Path(f).exists()]
    for missing in sorted(set(args.text_files) - set(files)):
        logger.warning("skipping missing text file %s", missing)
    curriculum = ensure_curriculum(seed=args.curriculum_seed) if args.curriculum_seed is not None else None
    sources = [iter_curriculum_text(curriculum)] if curriculum else []
    sources += [iter_text_files(files, "train", args.heldout_fraction) for _ in range(args.text_repeats)]
    tokenizer = train_tokenizer(
        chain.from_iterable(sources),
        vocab_size=args.vocab_size,
        reserved_tokens=args.reserved_tokens,
        min_frequency=args.min_frequency,
        split_digits=args.split_digits,
    )
    save_tokenizer(tokenizer, args.output_dir)
    report = {}
    if files:
        report["text_files_heldout"] = compression(tokenizer, iter_text_files(files, "heldout", args.heldout_fraction))
    if curriculum:
        report["curriculum_eval"] = compression(tokenizer, iter_text_files([curriculum["sft"]["eval"]], "all"))
    print(
        json.dumps({"output_dir": args.output_dir, "vocab_size": len(tokenizer), "chars_per_token": report}, indent=2)
    )
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(*make_parser().parse_args_and_config())
