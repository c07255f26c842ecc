"""Prepare a MiniMind folder for the Hugging Face Hub: remote code, full auto_map, tokenizer, generation config and
a model card with metadata; it loads with `trust_remote_code=True` where minimind_hf is not installed.

    python convert/to_hub.py --model out/minimind2-small --out out/hub --repo_id your-name/minimind2-small
    python convert/to_hub.py --model out/minimind2-small --out out/hub --repo_id your-name/minimind2-small --push
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from minimind_hf.converters import ConversionError
from minimind_hf.converters.hub import export_hub, push_folder


@dataclass
class Arguments:
    model: str = field(metadata={"help": "MiniMind folder (with its tokenizer)."})
    out: str = field(metadata={"help": "Output folder."})
    repo_id: str = field(default="your-name/minimind", metadata={"help": "Hub repository named in the model card."})
    push: bool = field(default=False, metadata={"help": "Upload the folder to --repo_id (needs a Hub token)."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private when pushing."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


def main(argv=None):
    (args,) = HfArgumentParser(Arguments, description=__doc__).parse_args_into_dataclasses(argv)
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
