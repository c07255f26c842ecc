"""Merge a LoRA adapter (the output of `recipes/lora.py`) into its base with PEFT's `merge_and_unload` and save a
plain MiniMind folder: config with `auto_map`, modeling files, safetensors, tokenizer with the inference chat template.
It loads with `AutoModelForCausalLM.from_pretrained` and converts with `convert/` like any MiniMind checkpoint. An
adapter that does not fit the base stops with one error before anything is written.

    python recipes/merge_lora.py --adapter_path outputs/minimind2-small/lora \
        --output_dir outputs/minimind2-small/lora-merged
    # another base than the one recorded in the adapter:
    python recipes/merge_lora.py --adapter_path outputs/tiny/lora --base_model_name_or_path outputs/tiny/sft \
        --output_dir outputs/tiny/lora-merged
"""

from dataclasses import dataclass, field
from pathlib import Path

from minimind_hf.lora import merge_lora
from minimind_hf.training import RecipeParser


@dataclass
class MergeArguments:
    adapter_path: str = field(metadata={"help": "Adapter folder written by recipes/lora.py."})
    output_dir: str = field(metadata={"help": "Where the merged MiniMind folder goes (must not exist)."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base checkpoint (default: the one recorded in the adapter's config)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output_dir."})


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((MergeArguments,))


def main(args: MergeArguments) -> Path:
    return merge_lora(args.adapter_path, args.output_dir, args.base_model_name_or_path, overwrite=args.overwrite)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
