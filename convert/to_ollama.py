"""Convert a MiniMind folder into an ollama model folder: a GGUF file and a Modelfile with a Go TEMPLATE equivalent
to MiniMind's chat template (default system prompt, tools, thinking), stop tokens and sampling parameters.

    python convert/to_ollama.py --model out/minimind2-small --out out/minimind2-small-ollama
    python convert/to_ollama.py --model out/minimind3 --out out/minimind3-ollama --no_default_system
    cd out/minimind2-small-ollama && ollama create minimind2-small -f Modelfile && ollama run minimind2-small
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from minimind_hf.converters import ConversionError
from minimind_hf.converters.gguf_export import OUTTYPES
from minimind_hf.converters.ollama import DEFAULT_SYSTEM_PROMPT, export_ollama


@dataclass
class Arguments:
    model: str = field(metadata={"help": "MiniMind folder (with its tokenizer)."})
    out: str = field(metadata={"help": "Output folder (Modelfile + GGUF)."})
    outtype: str = field(default="q8_0", metadata={"help": "GGUF weight type.", "choices": list(OUTTYPES)})
    no_default_system: bool = field(default=False, metadata={"help": "No default system prompt (minimind-3)."})
    num_ctx: int = field(default=4096, metadata={"help": "ollama context window."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


def main(argv=None):
    (args,) = HfArgumentParser(Arguments, description=__doc__).parse_args_into_dataclasses(argv)
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
