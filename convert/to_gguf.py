"""Convert a MiniMind folder into a GGUF file for llama.cpp: dense -> `llama` (q/k permuted), MoE without QK-norm ->
`llama` with Mixtral-style experts (shared expert folded in), QK-norm -> `qwen3` / `qwen3moe`. Tokenizer (`gpt-2`
pre-tokenizer), special tokens, chat template and YaRN settings are embedded.

    python convert/to_gguf.py --model out/minimind2-small --out out/minimind2-small-f16.gguf --outtype f16
    python convert/to_gguf.py --model out/minimind3-moe --out out/minimind3-moe-q8_0.gguf --outtype q8_0
    llama-server -m out/minimind2-small-f16.gguf --jinja
"""

import argparse
import sys

from minimind_hf.converters import ConversionError, export_gguf
from minimind_hf.converters.gguf_export import OUTTYPES


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MiniMind folder (with its tokenizer)")
    parser.add_argument("--out", required=True, help="output .gguf file")
    parser.add_argument("--outtype", choices=list(OUTTYPES), default="f16", help="weight type of 2-D tensors")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        out = export_gguf(args.model, args.out, args.outtype, tokenizer=args.tokenizer, overwrite=args.overwrite)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
