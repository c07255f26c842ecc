"""Convert a MiniMind folder into a native architecture that vLLM, transformers and llama.cpp's own converter run
without remote code: dense -> LlamaForCausalLM, QK-norm -> Qwen3ForCausalLM, minimind-3-MoE -> Qwen3MoeForCausalLM,
MiniMind2-MoE -> MixtralForCausalLM (shared expert folded into every routed expert, exact).

    python convert/to_native.py --model out/minimind2-small --out out/minimind2-small-llama
    python convert/to_native.py --model out/minimind2-moe --out out/minimind2-moe-mixtral --dtype bfloat16
    vllm serve out/minimind2-small-llama        # or: python -m vllm.entrypoints.openai.api_server --model ...
"""

import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from minimind_hf.converters import ConversionError, export_native
from minimind_hf.converters.hf_native import TARGETS

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Arguments:
    model: str = field(metadata={"help": "MiniMind folder."})
    out: str = field(metadata={"help": "Output folder."})
    target: str = field(
        default="auto",
        metadata={
            "help": "Native architecture (auto: one that represents the model exactly).",
            "choices": ["auto", *TARGETS],
        },
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype (default: as stored).", "choices": list(DTYPES)}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


def main(argv=None):
    (args,) = HfArgumentParser(Arguments, description=__doc__).parse_args_into_dataclasses(argv)
    try:
        out = export_native(args.model, args.out, args.target, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
