"""Convert a MiniMind folder into a GGUF file for llama.cpp: dense -> `llama` (q/k permuted), MoE without QK-norm ->
`llama` with Mixtral-style experts (shared expert folded in), QK-norm -> `qwen3` / `qwen3moe`. Tokenizer (`gpt-2`
pre-tokenizer), special tokens, chat template and YaRN settings are embedded.

    python convert/to_gguf.py --model out/minimind2-small --out out/minimind2-small-f16.gguf --outtype f16
    python convert/to_gguf.py --model out/minimind3-moe --out out/minimind3-moe-q8_0.gguf --outtype q8_0
    llama-server -m out/minimind2-small-f16.gguf --jinja
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from minimind_hf.converters import ConversionError, export_gguf
from minimind_hf.converters.gguf_export import OUTTYPES


@dataclass
class Arguments:
    model: str = field(metadata={"help": "MiniMind folder (with its tokenizer)."})
    out: str = field(metadata={"help": "Output .gguf file."})
    outtype: str = field(default="f16", metadata={"help": "Weight type of 2-D tensors.", "choices": list(OUTTYPES)})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: the model folder)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output file."})


def main(argv=None):
    (args,) = HfArgumentParser(Arguments, description=__doc__).parse_args_into_dataclasses(argv)
    try:
        out = export_gguf(args.model, args.out, args.outtype, tokenizer=args.tokenizer, overwrite=args.overwrite)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
