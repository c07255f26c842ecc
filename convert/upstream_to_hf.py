"""Convert an upstream MiniMind checkpoint into a MiniMind folder (safetensors, config with auto_map and remote code,
tokenizer with chat template, generation config).

    # a native .pth state dict; the architecture is inferred from tensor shapes (or fixed by --preset)
    python convert/upstream_to_hf.py --pth full_sft_512.pth --tokenizer minimind/model --out minimind2-small
    python convert/upstream_to_hf.py --pth full_sft_640_moe.pth --preset minimind2-moe --tokenizer minimind/model \
        --out minimind2-moe --yarn
    # a published upstream HF folder (its own tokenizer is used)
    python convert/upstream_to_hf.py --folder MiniMind2 --out minimind2-hf
"""

import argparse
import sys

import torch

from minimind_hf.converters import ConversionError
from minimind_hf.converters.upstream import convert_upstream_folder, convert_upstream_pth

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pth", help="upstream .pth state dict (loaded with weights_only=True)")
    source.add_argument("--folder", help="upstream HF folder (config.json with model_type minimind)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tokenizer", help="upstream tokenizer folder (required with --pth)")
    parser.add_argument("--preset", help="preset fixing what shapes cannot show, e.g. minimind2-moe")
    parser.add_argument("--num-attention-heads", type=int, help="query heads without QK-norm or preset (default 8)")
    parser.add_argument("--yarn", action="store_true", help="switch on upstream's YaRN (x16 over 2048 positions)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="auto", help="weights dtype (default: as stored)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        if args.pth:
            out = convert_upstream_pth(
                args.pth,
                args.out,
                tokenizer=args.tokenizer,
                preset=args.preset,
                num_attention_heads=args.num_attention_heads,
                yarn=args.yarn,
                dtype=DTYPES[args.dtype],
                overwrite=args.overwrite,
            )
        else:
            out = convert_upstream_folder(
                args.folder, args.out, tokenizer=args.tokenizer, dtype=DTYPES[args.dtype], overwrite=args.overwrite
            )
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
