"""What every recipe shares: argument dataclasses, the YAML/CLI parser, model and tokenizer construction with the
checks that must fail before anything is written, resuming, and the loss-curve plot.

The argument grammar is TRL's: a data-arguments dataclass, the trainer's config (`SFTConfig`, `DPOConfig`, ...) and
[`ModelArguments`], which is `trl.ModelConfig` (`model_name_or_path`, `dtype`, `attn_implementation`, `use_peft`
and the `lora_*` flags) plus what a fresh MiniMind needs (`preset`, `config_overrides`, `tokenizer_name_or_path`).
Every recipe module exports `make_parser()` (a [`RecipeParser`] over its dataclasses) and `main(...)` taking the
parsed dataclasses, so `python recipes/X.py`, `accelerate launch recipes/X.py`, `python -m recipes.X` and
`from recipes import X` all work the same.

Recipes stay thin (parse, build, `trainer.train()`); training loops and losses belong to TRL and transformers.
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from trl import ModelConfig, TrlParser, get_quantization_config

from .configuration_minimind import PRESETS, MiniMindConfig
from .modeling_minimind import MiniMindForCausalLM, MiniMindForSequenceClassification
from .tokenization import load_tokenizer

logger = logging.getLogger(__name__)

# Fields that fix a checkpoint's tensor shapes: a preset that disagrees on any of them cannot describe the checkpoint.
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "use_qk_norm",
    "num_experts",
)


# Every linear projection of a MiniMind block: attention, dense MLP, routed and shared experts (PEFT matches these
# names as suffixes, so `gate_proj` reaches `mlp.experts.3.gate_proj`). The router `mlp.gate` is not among them.
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` with MiniMind's additions: which model a recipe starts from and, with `use_peft`, the LoRA
    adapter it trains (`trl.get_peft_config`, plus the router check of `minimind_hf.lora.lora_config`). The LoRA
    defaults are upstream's: rank 8, alpha 8 (unscaled), no dropout, every attention and MLP projection."""

    preset: str | None = field(
        default=None,
        metadata={"help": f"Build a fresh model of a named size: {', '.join(PRESETS)}."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder. Defaults to the checkpoint's, else the tokenizer shipped in the package."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Extra MiniMindConfig fields for a fresh model: a JSON object on the command line, a mapping in "
            "YAML, e.g. '{\"hidden_dropout\": 0.1}'."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (upstream: 8)."})
    lora_alpha: int = field(
        default=8,
        metadata={"help": "Updates are scaled by lora_alpha / lora_r; 8 / 8 = 1 is upstream's unscaled LoRA."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input (upstream: none)."})
    nonfinite: str = field(
        default="stop",
        metadata={
            "help": "An optimiser step whose gradients hold NaN or inf: `stop` the run before the weights change "
            "(the last checkpoint stays good), or `skip` the step and go on.",
            "choices": ["stop", "skip"],
        },
    )
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={
            "help": "Module name suffixes to adapt, or `all-linear`. Default: every attention and MLP projection, "
            "experts included. The MoE router is never adapted."
        },
    )

    def __post_init__(self):
        # TRL turns a one-element list into a string, which PEFT reads as a regular expression over the full module
        # name: keep module names as a list (`all-linear` is PEFT's keyword, a string).
        targets = self.lora_target_modules
        super().__post_init__()
        if isinstance(targets, list) and targets != ["all-linear"]:
            self.lora_target_modules = targets


@dataclass
class DataArguments:
    """Where a recipe's data comes from. Without files, the embedded curriculum's split for the stage is used."""

    dataset_files: list[str] | None = field(
        default=None, metadata={"help": "Training JSONL files in upstream MiniMind's format for this stage."}
    )
    eval_files: list[str] | None = field(default=None, metadata={"help": "Held-out JSONL files (optional)."})
    curriculum_seed: int = field(default=0, metadata={"help": "Seed of the embedded curriculum."})
    curriculum_stage: str | None = field(
        default=None,
        metadata={"help": "Train on another curriculum stage's training file (default: the recipe's own stage)."},
    )
    curriculum_dir: str | None = field(
        default=None, metadata={"help": "Where the curriculum is generated (default: the package cache)."}
    )

    def files(self, stage: str) -> tuple[list, list | None]:
        """(training files, held-out files): `dataset_files` and `eval_files` when given, else the curriculum's
        training split for `stage` (generated on first use)."""
        if self.dataset_files:
            return self.dataset_files, self.eval_files
        from .curriculum import ensure_curriculum

        paths = ensure_curriculum(self.curriculum_dir, seed=self.curriculum_seed)
        stage = self.curriculum_stage or stage
        if "train" not in paths.get(stage, {}):
            with_train = sorted(name for name, files in paths.items() if "train" in files)
            raise RecipeError(f"curriculum_stage: {stage!r} has no training file (stages that do: {with_train})")
        return [paths[stage]["train"]], self.eval_files


BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, x86 AMX, Arm BF16


def cpu_bf16_instructions() -> list[str]:
    """The bf16 matrix instructions this CPU has, by the names of `BF16_INSTRUCTIONS`, from the capabilities torch
    reports (`torch.cpu.get_capabilities`, recent torch) and the flags of /proc/cpuinfo (Linux)."""
    caps = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    return [name for name in BF16_INSTRUCTIONS if caps.get(name) is True or name in flags]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions. Without them CPU autocast to bfloat16 is emulated: on a 2-core
    AVX2 machine a `tiny` pretraining step took 15x as long as in fp32."""
    return bool(cpu_bf16_instructions())


class RecipeError(ValueError):
    """A recipe's inputs are inconsistent; raised before any output is written."""


class RecipeParser(TrlParser):
    """TRL's parser (defaults < YAML `--config` < command line) that first checks the config file: a missing or
    malformed file, or a key no argument dataclass knows, stops with one error naming the file (TRL's own checks do
    not). Parsed `TrainingArguments` stop pinning DataLoader memory where there is no accelerator (torch only warns),
    and `bf16` asked for where there is no accelerator trains on the CPU in bf16 autocast (transformers would stop
    with "Your setup doesn't support bf16/gpu" unless `use_cpu` is also set) where the CPU has bf16 matrix
    instructions or `--bf16` is on the command line; a YAML's or the default's bf16 on any other CPU trains in fp32,
    with a warning."""

    def parse_args_and_config(self, args: list[str] | None = None, **kwargs):
        argv = sys.argv[1:] if args is None else list(args)
        config = {}
        if "--config" in argv[:-1]:
            config = self._check_config(Path(argv[argv.index("--config") + 1]))
        if self._bf16_on_cpu(argv, config):
            if cpu_has_native_bf16() or any(w == "--bf16" or w.startswith("--bf16=") for w in argv):
                argv += ["--use_cpu", "true"]
            else:
                logger.warning(
                    "bf16 (from %s) with no accelerator, on a CPU without bf16 matrix instructions (AVX512-BF16, AMX "
                    "or Arm BF16), where bf16 autocast is emulated and many times slower than fp32: training in fp32 "
                    "instead (pass --bf16 true to train in bf16 anyway)",
                    "the config" if "bf16" in config else "the default",
                )
                argv += ["--bf16", "false"]
        parsed = super().parse_args_and_config(args=argv, **kwargs)
        for item in parsed:
            if (
                isinstance(item, TrainingArguments)
                and item.dataloader_pin_memory
                and not torch.accelerator.is_available()
            ):
                item.dataloader_pin_memory = False
        return parsed

    def _bf16_on_cpu(self, argv: list[str], config: dict) -> bool:
        """Whether training will be in bf16 (command line over YAML over the default, which TRL's configs resolve to
        `not fp16`), `use_cpu` is not set, and there is no accelerator."""
        if torch.accelerator.is_available() or "--use_cpu" in argv or "use_cpu" in config:
            return False
        fields = {f.name: f for t in self.dataclass_types for f in dataclasses.fields(t)}
        if "use_cpu" not in fields or "bf16" not in fields:
            return False

        def flag(name: str):
            value = config.get(name, fields[name].default if name in fields else None)
            for i, word in enumerate(argv):
                if word == f"--{name}":
                    following = argv[i + 1] if i + 1 < len(argv) else ""
                    value = following.lower() in ("true", "1", "yes") or following.startswith("--") or not following
                elif word.startswith(f"--{name}="):
                    value = word.split("=", 1)[1].lower() in ("true", "1", "yes")
            return value

        bf16 = flag("bf16")
        return bool(not flag("fp16") if bf16 is None else bf16)

    def _check_config(self, config_path: Path) -> dict:
        if not config_path.is_file():
            raise RecipeError(f"{config_path}: config file not found")
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise RecipeError(f"{config_path}: not valid YAML: {err}") from None
        if not isinstance(config, dict):
            raise RecipeError(f"{config_path}: must be a YAML mapping of argument names to values")
        known = {f.name for t in self.dataclass_types for f in dataclasses.fields(t)} | {"env"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise RecipeError(f"{config_path}: unknown key(s) {', '.join(unknown)}")
        return config


def recipe_tokenizer(model_args: ModelArguments):
    """The tokenizer named by the arguments, else the checkpoint's own, else the one shipped in the package."""
    if model_args.tokenizer_name_or_path:
        return load_tokenizer(model_args.tokenizer_name_or_path)
    if model_args.model_name_or_path and (Path(model_args.model_name_or_path) / "tokenizer_config.json").exists():
        return load_tokenizer(model_args.model_name_or_path)
    return load_tokenizer()


def check_preset_matches(preset: str, checkpoint: str) -> None:
    """Refuse a preset that describes another architecture than the checkpoint it is paired with."""
    expected = MiniMindConfig.from_preset(preset)
    actual = AutoConfig.from_pretrained(checkpoint)
    mismatched = [
        f"{name} {getattr(expected, name, None)} (preset) vs {getattr(actual, name, None)} (checkpoint)"
        for name in ARCHITECTURE_FIELDS
        if getattr(expected, name, None) != getattr(actual, name, None)
    ]
    if mismatched:
        raise RecipeError(f"preset {preset!r} does not match checkpoint {checkpoint}: " + "; ".join(mismatched))


def build_model(
    model_args: ModelArguments, tokenizer, seed: int | None = None, num_labels: int | None = None
) -> PreTrainedModel:
    """A fresh model from `preset` (+ `config_overrides`) or the checkpoint in `model_name_or_path`. `seed` seeds a
    fresh model's initialisation (the Trainer seeds only after the model exists), so runs are reproducible.

    With `num_labels` the model is a `MiniMindForSequenceClassification` with that many outputs (a reward model:
    1): a causal-LM checkpoint's backbone loads into it and the `score` head starts fresh, seeded by `seed`."""
    if not model_args.preset and not model_args.model_name_or_path:
        raise RecipeError("model: set `preset` (fresh model) or `model_name_or_path` (checkpoint)")
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        checkpoint = Path(model_args.model_name_or_path)
        if not (checkpoint / "config.json").is_file():
            raise RecipeError(f"model_name_or_path: {checkpoint} is not a model folder (no config.json)")
        if model_args.preset:
            check_preset_matches(model_args.preset, str(checkpoint))
        # Trainable weights stay float32 by default (TRL's `dtype`); mixed precision is the trainer's `bf16`.
        dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
        quantization = get_quantization_config(model_args)  # load_in_4bit / load_in_8bit (bitsandbytes, QLoRA)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        if num_labels is None:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, **kwargs)
        else:
            if seed is not None:
                set_seed(seed)  # the new `score` head's initialisation
            model = AutoModelForSequenceClassification.from_pretrained(
                checkpoint, dtype=dtype, num_labels=num_labels, **kwargs
            )
    else:
        overrides = model_args.config_overrides or {}
        if isinstance(overrides, str):
            overrides = json.loads(overrides)
        config = MiniMindConfig.from_preset(model_args.preset, **overrides)
        if model_args.attn_implementation:
            config._attn_implementation = model_args.attn_implementation
        if seed is not None:
            set_seed(seed)
        if num_labels is None:
            model = MiniMindForCausalLM(config)
        else:
            config.num_labels = num_labels
            model = MiniMindForSequenceClassification(config)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise RecipeError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has only {vocab} rows")
    return model


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a `checkpoint-*` folder cannot be resumed from (a kill or a full disk during its write), or None.

    The Trainer writes `trainer_state.json` last, so a checkpoint without a readable one is incomplete; every
    safetensors file in it (the model, an adapter, PPO's value model) must open with a header that covers the file.
    """
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json: its write did not finish"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return f"trainer_state.json does not parse ({error})"
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights and not (folder / "pytorch_model.bin").is_file():
        return "no model weights"
    for path in weights:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as error:  # safetensors raises its own error type for any damage
            return f"{path.relative_to(folder)} is damaged ({error})"
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, newest step first."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True)


def _check_writable(output_dir: Path) -> None:
    """Stops before training when `output_dir` could not be written: a file where a folder must be, or a folder this
    process cannot create files in (read-only, no permission). Nothing is created: the test file is anonymous."""
    existing = output_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"output_dir: {output_dir} cannot be created: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RecipeError(f"output_dir: {output_dir} is not writable: {existing}: {error.strerror}") from None


def check_output_dir(training_args) -> str | None:
    """The checkpoint to resume from, or None. A folder that already holds `checkpoint-*` folders is refused unless
    the run resumes from them, so an earlier run's checkpoints are never silently mixed with a new one's.

    `resume_from_checkpoint: true` takes the newest checkpoint that is complete ([`checkpoint_problem`]): a damaged
    newer one is named on stderr and passed over; a named checkpoint that is damaged stops the run."""
    output_dir = Path(training_args.output_dir)
    _check_writable(output_dir)
    checkpoints = _checkpoints(output_dir) if output_dir.is_dir() else []
    resume = training_args.resume_from_checkpoint
    if resume in (True, "true", "True", "last"):
        if not checkpoints:
            raise RecipeError(f"resume_from_checkpoint: no checkpoint-* folder in {output_dir}")
        problems = []
        for checkpoint in checkpoints:
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                for damaged in problems:
                    print(f"resume_from_checkpoint: skipping {damaged}", file=sys.stderr)
                return str(checkpoint)
            problems.append(f"{checkpoint}: {problem}")
        raise RecipeError("resume_from_checkpoint: no complete checkpoint: " + "; ".join(problems))
    if resume:
        if not Path(resume).is_dir():
            raise RecipeError(f"resume_from_checkpoint: {resume} does not exist")
        problem = checkpoint_problem(resume)
        if problem is not None:
            raise RecipeError(f"resume_from_checkpoint: {resume}: {problem}")
        return resume
    if checkpoints:
        raise RecipeError(
            f"output_dir: {output_dir} already holds {checkpoints[0].name}; pass `--resume_from_checkpoint true` to "
            "continue that run, or choose another folder"
        )
    return None


def write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """Writes `data` as UTF-8 JSON to a temporary name beside `path` (its folder made if missing), then renames it: a
    reader never sees half a file, and a failed write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=indent), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def plot_loss_curve(log_history: list[dict], path: str | os.PathLike) -> Path | None:
    """Draw training (and eval, and MoE aux) loss against the step from `trainer.state.log_history` to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for key in ("loss", "eval_loss", "aux_loss"):
        points = [(e["step"], e[key]) for e in log_history if key in e and math.isfinite(e[key])]
        if points:
            series[key] = points
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class NonFiniteGuard(TrainerCallback):
    """Checks every optimiser step's gradients (after clipping, before the update) for NaN or inf: a non-finite loss
    or gradient. `stop` raises `FloatingPointError` naming the step and the first bad parameter before the weights
    change, so no checkpoint is ever written from poisoned weights; `skip` drops the step's gradients (the optimiser
    then leaves every parameter as it was), counts it and goes on, logging `nonfinite_skipped`."""

    def __init__(self, mode: str = "stop"):
        if mode not in ("stop", "skip"):
            raise RecipeError(f"nonfinite: {mode!r} is neither `stop` nor `skip`")
        self.mode, self.skipped = mode, 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = next(
            (n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()), None
        )
        if bad is None:
            return
        step = state.global_step + 1
        if self.mode == "stop":
            saved = _checkpoints(Path(args.output_dir)) if Path(args.output_dir).is_dir() else []
            last = saved[0] if saved else None
            raise FloatingPointError(
                f"step {step}: the gradient of {bad} is not finite (a NaN or inf loss or gradient); training stopped "
                f"before this update, so the weights{f' and {last}' if last else ''} are untouched. Lower the "
                "learning rate, check the data, or pass `--nonfinite skip` to skip such steps"
            )
        for parameter in model.parameters():
            parameter.grad = None
        self.skipped += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.skipped and state.log_history:
            state.log_history[-1]["nonfinite_skipped"] = self.skipped


STAGING = ".partial"


def write_checkpoints_atomically(trainer) -> None:
    """Makes `trainer` write each `checkpoint-<step>` folder whole or not at all: the Trainer's own save goes into
    `<output_dir>/.partial/`, and the finished folder is then renamed into place (one `rename` on the same file
    system), after which the Trainer's rotation (`save_total_limit`) runs on the real folder. A kill or a full disk
    mid-write leaves only `.partial/`, which resuming never reads and the next save clears; the checkpoints already
    in place are never touched. Transformers writes in place, so a killed save otherwise leaves a half-written
    `checkpoint-<step>` beside the good ones."""
    save = trainer._save_checkpoint
    output_dir = trainer._get_output_dir

    def atomic_save(model, trial, *args, **kwargs):
        run_dir = Path(output_dir(trial=trial))
        staging, name = run_dir / STAGING, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        if trainer.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
        limit, trainer.args.save_total_limit = trainer.args.save_total_limit, None  # rotate after the rename
        trainer._get_output_dir = lambda trial=None: str(staging)
        try:
            save(model, trial, *args, **kwargs)
        except OSError as error:  # a full disk, say: free what was half-written, keep every finished checkpoint
            shutil.rmtree(staging, ignore_errors=True)
            raise OSError(
                error.errno,
                f"writing {name} failed ({error.strerror}); the checkpoints already in {run_dir} are intact: free "
                "space or fix the folder, then resume with `--resume_from_checkpoint true`",
            ) from error
        finally:
            trainer._get_output_dir = output_dir
            trainer.args.save_total_limit = limit
        if not trainer.args.should_save:
            return
        target = run_dir / name
        if target.exists():  # the same step saved again (the end of an epoch on a save step)
            shutil.rmtree(target)
        os.replace(staging / name, target)
        staging.rmdir()
        best = trainer.state.best_model_checkpoint
        if best and Path(best).parent == staging:
            trainer.state.best_model_checkpoint = str(run_dir / Path(best).name)
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
        )

    trainer._save_checkpoint = atomic_save


def train(trainer, resume_from: str | None, model_args: ModelArguments):
    """`trainer.train` with the [`NonFiniteGuard`] of `model_args.nonfinite`, checkpoints written atomically
    ([`write_checkpoints_atomically`])."""
    trainer.add_callback(NonFiniteGuard(model_args.nonfinite))
    write_checkpoints_atomically(trainer)
    return trainer.train(resume_from_checkpoint=resume_from)


def finish_run(trainer) -> dict:
    """Save the final model, tokenizer, `trainer_state.json` (the log history) and the loss curve; return the run's
    final training metrics."""
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        plot_loss_curve(trainer.state.log_history, Path(trainer.args.output_dir) / "loss_curve.png")
    train_logs = [e for e in trainer.state.log_history if "train_loss" in e]
    return train_logs[-1] if train_logs else {}


def end_distributed() -> None:
    """Tear down the process group after the trainer is gone. With torch 2.13 a process that exits while a DDP wrapper
    and its gloo group are still alive sometimes aborts ("terminate called without an active exception") after all
    its work is done; collecting the trainer first and destroying the group explicitly avoids it."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = [
    "DataArguments",
    "DEFAULT_TARGET_MODULES",
    "ModelArguments",
    "RecipeError",
    "RecipeParser",
    "build_model",
    "check_output_dir",
    "check_preset_matches",
    "end_distributed",
    "finish_run",
    "plot_loss_curve",
    "recipe_tokenizer",
]
