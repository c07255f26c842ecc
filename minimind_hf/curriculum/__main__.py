"""Writes the embedded curriculum to a folder.

Usage:
    python -m minimind_hf.curriculum --out data/curriculum --seed 0
    python -m minimind_hf.curriculum --out data/curriculum --count_tokens   # also print tokens per stage
"""

import argparse
import json

from .cache import write_curriculum
from .statistics import count_tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created; existing curriculum files are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="world and sampling seed")
    parser.add_argument(
        "--count_tokens", action="store_true", help="print records and tokens per file with the shipped tokenizer"
    )
    args = parser.parse_args(argv)
    paths = write_curriculum(args.out, seed=args.seed)
    if args.count_tokens:
        from ..tokenization import load_tokenizer

        print(json.dumps(count_tokens(paths, load_tokenizer()), indent=2))
        return
    print(json.dumps({stage: {name: str(p) for name, p in files.items()} for stage, files in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
