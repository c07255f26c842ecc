"""Convert a MiniMind folder into an ollama model folder: a GGUF file and a Modelfile with a Go TEMPLATE equivalent
to MiniMind's chat template (default system prompt, tools, thinking), stop tokens and sampling parameters.

    python convert/to_ollama.py --model out/minimind2-small --out out/minimind2-small-ollama
    python convert/to_ollama.py --model out/minimind3 --out out/minimind3-ollama --no-default-system
    cd out/minimind2-small-ollama && ollama create minimind2-small -f Modelfile && ollama run minimind2-small
"""

import argparse
import sys

from minimind_hf.converters import ConversionError
from minimind_hf.converters.gguf_export import OUTTYPES
from minimind_hf.converters.ollama import DEFAULT_SYSTEM_PROMPT, export_ollama


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MiniMind folder (with its tokenizer)")
    parser.add_argument("--out", required=True, help="output folder (Modelfile + GGUF)")
    parser.add_argument("--outtype", choices=list(OUTTYPES), default="q8_0", help="GGUF weight type")
    parser.add_argument("--no-default-system", action="store_true", help="no default system prompt (minimind-3)")
    parser.add_argument("--num-ctx", type=int, default=4096, help="ollama context window")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        out = export_ollama(
            args.model,
            args.out,
            outtype=args.outtype,
            default_system=None if args.no_default_system else DEFAULT_SYSTEM_PROMPT,
            num_ctx=args.num_ctx,
            overwrite=args.overwrite,
        )
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
