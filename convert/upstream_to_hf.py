"""Convert an upstream MiniMind checkpoint into a MiniMind folder (safetensors, config with auto_map and remote code,
tokenizer with chat template, generation config).

    # a native .pth state dict; the architecture is inferred from tensor shapes (or fixed by --preset)
    python convert/upstream_to_hf.py --pth full_sft_512.pth --tokenizer minimind/model --out minimind2-small
    python convert/upstream_to_hf.py --pth full_sft_640_moe.pth --preset minimind2-moe --tokenizer minimind/model \
        --out minimind2-moe --yarn
    # a published upstream HF folder (its own tokenizer is used)
    python convert/upstream_to_hf.py --folder MiniMind2 --out minimind2-hf
"""

import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from minimind_hf.converters import ConversionError
from minimind_hf.converters.upstream import convert_upstream_folder, convert_upstream_pth

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Arguments:
    out: str = field(metadata={"help": "Output folder."})
    pth: str | None = field(
        default=None, metadata={"help": "Upstream .pth state dict (loaded with weights_only=True); or --folder."}
    )
    folder: str | None = field(
        default=None, metadata={"help": "Upstream HF folder (config.json with model_type minimind); or --pth."}
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Upstream tokenizer folder (required with --pth)."})
    preset: str | None = field(
        default=None, metadata={"help": "Preset fixing what shapes cannot show, e.g. minimind2-moe."}
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "Query heads without QK-norm or preset (default 8)."}
    )
    yarn: bool = field(default=False, metadata={"help": "Switch on upstream's YaRN (x16 over 2048 positions)."})
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype (default: as stored).", "choices": list(DTYPES)}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


def main(argv=None):
    parser = HfArgumentParser(Arguments, description=__doc__)
    (args,) = parser.parse_args_into_dataclasses(argv)
    if (args.pth is None) == (args.folder is None):
        parser.error("give exactly one of --pth (a .pth state dict) and --folder (an upstream HF folder)")
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
