"""Writes the embedded curriculum to a folder.

Usage:
    python -m minimind_hf.curriculum --out data/curriculum --seed 0
"""

import argparse
import json

from .generator import write_curriculum


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created; existing curriculum files are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="world and sampling seed")
    args = parser.parse_args(argv)
    paths = write_curriculum(args.out, seed=args.seed)
    print(json.dumps({stage: {name: str(p) for name, p in files.items()} for stage, files in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
