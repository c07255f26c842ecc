"""Prepare a MiniMind folder for the Hugging Face Hub: remote code, full auto_map, tokenizer, generation config and
a model card with metadata; it loads with `trust_remote_code=True` where minimind_hf is not installed.

    python convert/to_hub.py --model out/minimind2-small --out out/hub --repo-id your-name/minimind2-small
    python convert/to_hub.py --model out/minimind2-small --out out/hub --repo-id your-name/minimind2-small --push
"""

import argparse
import sys

from minimind_hf.converters import ConversionError
from minimind_hf.converters.hub import export_hub, push_folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MiniMind folder (with its tokenizer)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--repo-id", default="your-name/minimind", help="Hub repository named in the model card")
    parser.add_argument("--push", action="store_true", help="upload the folder to --repo-id (needs a Hub token)")
    parser.add_argument("--private", action="store_true", help="create the repository as private when pushing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        out = export_hub(args.model, args.out, repo_id=args.repo_id, overwrite=args.overwrite)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    if args.push:
        print(f"pushed to {push_folder(out, args.repo_id, private=args.private)}")
    return out


if __name__ == "__main__":
    main()
