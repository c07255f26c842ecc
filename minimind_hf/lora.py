"""LoRA for MiniMind through PEFT: the recipe arguments, the checks PEFT does not make, and merging an adapter back
into a plain MiniMind folder.

PEFT does the training-side work (`LoraConfig` from TRL's `get_peft_config`, `get_peft_model` inside TRL's
trainers, `merge_and_unload`); every training recipe takes `--use_peft` and the `lora_*` flags of
[`minimind_hf.training.ModelArguments`]. What PEFT leaves out, and this module adds:

- a guard that no target reaches the MoE router (`mlp.gate`, a bare parameter): PEFT would either refuse it with a
  generic "module not supported" or, through `target_parameters`, silently put an adapter on routing;
- a check that an adapter fits the base it is loaded onto: PEFT loads an adapter trained on a deeper model onto a
  shallower one with only a warning about unexpected keys, and reports a shape mismatch as a long `load_state_dict`
  traceback;
- `merge_lora`, which writes the merged model as a complete MiniMind folder (config with `auto_map`, modeling files,
  safetensors, tokenizer with the inference chat template), atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from datasets import concatenate_datasets
from peft import LoraConfig, PeftConfig, PeftModel
from peft.tuners.tuners_utils import check_target_module_exists
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl import get_peft_config

from .chat_templates import get_chat_template
from .converters.common import atomic_output, save_generation_config
from .modeling_minimind import MiniMindTopKRouter
from .tokenization import load_tokenizer
from .training import ModelArguments, RecipeError


def lora_config(model_args: ModelArguments, model) -> LoraConfig | None:
    """TRL's `get_peft_config(model_args)` (None without `use_peft`), after checking that no target is a MoE router
    of `model`.

    Raises:
        [`RecipeError`]: when a target module name matches a MoE router.
    """
    config = get_peft_config(model_args)
    if config is None:
        return None
    targets = config.target_modules
    routers = [
        name
        for name, module in model.named_modules()
        if isinstance(module, MiniMindTopKRouter) and check_target_module_exists(config, name)
    ]
    saved = model_args.lora_modules_to_save or []
    if routers or any(isinstance(model.get_submodule(n), MiniMindTopKRouter) for n in saved):
        raise RecipeError(
            f"lora_target_modules: {sorted(targets) if isinstance(targets, set) else targets} reach the MoE router "
            f"({(routers or saved)[0]}); routers are not adapted (their top-k choice is discrete, and a LoRA delta "
            "would change routing without a load-balancing signal). Name the expert projections instead (gate_proj, "
            "up_proj, down_proj)."
        )
    return config


def add_replay(dataset, replay, samples: int, exclude=(), seed: int = 0):
    """Appends `samples` conversations drawn (seeded) from `replay` to `dataset`, leaving out those that mention any
    string in `exclude`.

    A few hundred general SFT conversations next to a small behaviour set (e.g. a new identity) teach the adapter when
    the new behaviour applies; trained on the identity set alone, a LoRA learns to answer every question with it.
    `exclude` drops replay conversations that contradict the new behaviour (the old identity's name).
    """
    if samples <= 0:
        return dataset
    if exclude:
        exclude = list(exclude)
        replay = replay.filter(
            lambda example: not any(s in (m["content"] or "") for m in example["messages"] for s in exclude)
        )
    replay = replay.shuffle(seed=seed).select(range(min(samples, len(replay))))
    return concatenate_datasets([dataset, replay])


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>A|B)\.weight$")


def check_adapter_matches(base_model, adapter_path: str | os.PathLike) -> None:
    """Refuse an adapter whose LoRA matrices do not fit `base_model`: a module it adapts is missing from the base, or
    is not a linear layer, or has other input/output sizes.

    Raises:
        [`RecipeError`]: naming the adapter folder and up to five offending modules.
    """
    adapter_path = Path(adapter_path)
    weights_file = adapter_path / "adapter_model.safetensors"
    if not (adapter_path / "adapter_config.json").is_file() or not weights_file.is_file():
        raise RecipeError(f"adapter: {adapter_path} is not a PEFT adapter folder (adapter_config.json + safetensors)")
    modules = dict(base_model.named_modules())
    problems = []
    for key, tensor in load_file(weights_file).items():
        match = _LORA_KEY.match(key)
        if not match:
            continue
        name, which = match["module"], match["which"]
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            problems.append(f"{name}: {'missing from' if module is None else 'not a linear layer in'} the base model")
            continue
        # lora_A is [r, in_features], lora_B is [out_features, r]
        size, expected, label = (
            (tensor.shape[1], module.in_features, "in")
            if which == "A"
            else (tensor.shape[0], module.out_features, "out")
        )
        if size != expected:
            problems.append(f"{name}: adapter {label}_features {size}, base {expected}")
    if problems:
        problems = sorted(set(problems))
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems) - 5} more)" if len(problems) > 5 else "")
        raise RecipeError(f"adapter {adapter_path} does not fit the base model: {shown}")


def adapter_base_path(
    adapter_path: str | os.PathLike, base_model_name_or_path: str | os.PathLike | None = None
) -> Path:
    """The base checkpoint folder of an adapter: `base_model_name_or_path` if given, else the one its config records."""
    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").is_file():
        raise RecipeError(f"adapter: no adapter_config.json in {adapter_path}")
    base_path = base_model_name_or_path or PeftConfig.from_pretrained(adapter_path).base_model_name_or_path
    if not base_path or not (Path(base_path) / "config.json").is_file():
        raise RecipeError(
            f"base model: {base_path!r} (recorded in {adapter_path / 'adapter_config.json'}) is not a model folder; "
            "pass the base checkpoint explicitly"
        )
    return Path(base_path)


def load_lora_model(adapter_path: str | os.PathLike, base_model_name_or_path: str | os.PathLike | None = None):
    """The base model with the adapter applied (a `PeftModel`, eval mode), after [`check_adapter_matches`].

    Args:
        adapter_path: folder written by the LoRA recipe.
        base_model_name_or_path: base checkpoint; defaults to the one recorded in the adapter's config.
    """
    base = AutoModelForCausalLM.from_pretrained(adapter_base_path(adapter_path, base_model_name_or_path))
    check_adapter_matches(base, adapter_path)
    return PeftModel.from_pretrained(base, adapter_path).eval()


def merge_lora(
    adapter_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge a LoRA adapter into its base with PEFT's `merge_and_unload` and save a plain MiniMind folder.

    The folder loads with `AutoModelForCausalLM.from_pretrained` (registered or as remote code) and with the
    converters. It gets the adapter folder's tokenizer (else the base's), with the inference chat template.

    Raises:
        [`RecipeError`]: when the adapter does not fit the base, or `output_dir` exists (unless `overwrite`); nothing
            is written then.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise RecipeError(f"output_dir: {output_dir} already exists (pass --overwrite true to replace it)")
    base_path = adapter_base_path(adapter_path, base_model_name_or_path)
    model = load_lora_model(adapter_path, base_path)
    has_tokenizer = (Path(adapter_path) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(adapter_path if has_tokenizer else base_path)
    tokenizer.chat_template = get_chat_template()
    merged = model.merge_and_unload()
    config = merged.config
    with atomic_output(output_dir, overwrite=overwrite) as staged:
        merged.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        save_generation_config(config, staged)
    return output_dir


__all__ = [
    "adapter_base_path",
    "add_replay",
    "check_adapter_matches",
    "count_parameters",
    "load_lora_model",
    "lora_config",
    "merge_lora",
]
