"""Convert a MiniMind folder into a native architecture that vLLM, transformers and llama.cpp's own converter run
without remote code: dense -> LlamaForCausalLM, QK-norm -> Qwen3ForCausalLM, minimind-3-MoE -> Qwen3MoeForCausalLM,
MiniMind2-MoE -> MixtralForCausalLM (shared expert folded into every routed expert, exact).

    python convert/to_native.py --model out/minimind2-small --out out/minimind2-small-llama
    python convert/to_native.py --model out/minimind2-moe --out out/minimind2-moe-mixtral --dtype bfloat16
    vllm serve out/minimind2-small-llama        # or: python -m vllm.entrypoints.openai.api_server --model ...
"""

import argparse
import sys

import torch

from minimind_hf.converters import ConversionError, export_native
from minimind_hf.converters.hf_native import TARGETS

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MiniMind folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--target", choices=["auto", *TARGETS], default="auto", help="native architecture")
    parser.add_argument("--dtype", choices=list(DTYPES), default="auto", help="weights dtype (default: as stored)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        out = export_native(args.model, args.out, args.target, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
