"""Group-relative policy optimisation (GRPO, and CISPO with `loss_type: cispo`) with TRL's GRPOTrainer, from an SFT
checkpoint, on verifiable rewards.

Rewards come from `minimind_hf.rewards` by name (`reward_funcs`, weighted by GRPOConfig's `reward_weights`), a
dotted path to any function with TRL's reward signature, or a reward-model folder (recipes/reward.py). Every reward
is checked against the data's columns before training. Prompts are the curriculum's RL prompts (or any JSONL in
upstream's RL format: a conversation ending in a user turn and `gt`, the expected answers); `max_prompt_length`
cuts long prompts from the left and `thinking_ratio` opens the thinking block on that share of prompts, as upstream
does (TRL has neither). With `beta > 0` TRL reloads the reference policy from `model_name_or_path`. Generation runs
through `model.generate` on CPU; `use_vllm: true` hands it to vLLM on a GPU. TRL logs reward per function, KL,
entropy, completion length and clip ratios to `trainer_state.json`.

Agentic RL: with `tools` (`curriculum`: the curriculum's calculator, unit converter and world lookup; or dotted paths
to functions with type hints and a Google docstring) TRL's multi-turn loop runs the policy's `<tool_call>` blocks
(parsed with the tokenizer's `response_template`), appends each reply as a `tool` message (masked from the loss) and
lets the policy go on, up to `max_tool_calling_iterations` rounds; rewards score the whole exchange (`exact_answer`
reads the last assistant turn, `tool_call_valid` every call). Each call runs time-limited (`tool_timeout`): a tool
that raises, hangs or gets bad arguments answers `error: ...`, never stopping the run. TRL logs
`tools/call_frequency` and `tools/failure_frequency`.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/grpo.py \
        --config recipes/minimind2-small/grpo.yaml
    # CPU run on the embedded curriculum's RL prompts, from the quickstart's SFT output:
    python recipes/grpo.py --config recipes/tiny/grpo.yaml
    python recipes/grpo.py --config recipes/tiny/cispo.yaml   # CISPO, upstream MiniMind's default RL loss
    python recipes/grpo.py --config recipes/tiny/agent.yaml   # agentic RL with the curriculum's tools
"""

import importlib
import json
from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer

from minimind_hf.chat_templates import RESPONSE_TEMPLATE
from minimind_hf.data import load_rl_dataset
from minimind_hf.eval_tools import time_limited
from minimind_hf.lora import lora_config
from minimind_hf.rewards import get_reward_funcs
from minimind_hf.rl import check_reward_data, prepare_prompts
from minimind_hf.trainers import compact_trainer_heads
from minimind_hf.training import (
    DataArguments,
    ModelArguments,
    RecipeError,
    RecipeParser,
    build_model,
    check_output_dir,
    end_distributed,
    finish_run,
    recipe_tokenizer,
    train,
)


@dataclass
class GRPODataArguments(DataArguments):
    """RL prompts in upstream's format (a conversation ending in a user turn, `gt`) or the curriculum's, and the
    rewards that score their completions."""

    curriculum_stage: str = field(default="rl", metadata={"help": "Curriculum stage used when no files are given."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact_answer"],
        metadata={
            "help": "Rewards: names in minimind_hf.rewards, dotted paths (`package.module.function`) or reward-model "
            "folders; weighted by `reward_weights`."
        },
    )
    reward_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Options of the factory rewards, by name: `{"length_window": {"max_chars": 64}}` (a YAML mapping, '
            "or a JSON string on the command line)."
        },
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Keep at most this many prompt tokens, cut from the left (upstream: 768)."}
    )
    thinking_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Open the thinking block on this share of prompts (upstream: 0.9); unset: the chat template's "
            "default, or `chat_template_kwargs`."
        },
    )
    tools: list[str] | None = field(
        default=None,
        metadata={
            "help": "Agentic RL: tools TRL's multi-turn loop runs for the policy. `curriculum` (calculator, "
            "convert_units, lookup in the curriculum seed's world) or dotted paths to functions with type hints and "
            "a Google docstring."
        },
    )
    tool_timeout: float = field(default=1.0, metadata={"help": "Seconds a tool call may run (then an error reply)."})


def reward_functions(data_args: GRPODataArguments) -> list:
    """The run's rewards: `reward_funcs` built with `reward_kwargs`; a bad name or option stops before training."""
    options = data_args.reward_kwargs or {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as error:
            raise RecipeError(f"reward_kwargs: not a JSON object ({error})") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise RecipeError(f"reward_kwargs: need a mapping of reward name to its options, got {options!r}")
    return get_reward_funcs(data_args.reward_funcs, **options)


def build_tools(data_args: GRPODataArguments) -> list | None:
    """The run's tools for TRL's tool loop (None without `tools`), each time-limited by `tool_timeout`: a tool that
    raises, hangs or gets bad arguments answers with an `error: ...` message the policy reads, never a crash."""
    if not data_args.tools:
        return None
    functions = []
    for name in data_args.tools:
        if name == "curriculum":
            from minimind_hf.curriculum import build_world, make_tools

            functions += make_tools(build_world(data_args.curriculum_seed)).values()
            continue
        module, _, attribute = name.rpartition(".")
        try:
            function = getattr(importlib.import_module(module), attribute) if module else None
        except (ImportError, AttributeError):
            function = None
        if not callable(function):
            raise RecipeError(f"tools: {name!r} is neither `curriculum` nor a dotted path to a function")
        functions.append(function)
    names = [fn.__name__ for fn in functions]
    if len(set(names)) != len(names):
        raise RecipeError(f"tools: two tools share a name ({names})")
    return [time_limited(fn, data_args.tool_timeout) for fn in functions]


def rewards_and_prompts(
    data_args: GRPODataArguments, training_args, tokenizer, render: bool = False, trainer_tools: bool = False
) -> tuple:
    """The run's reward functions (checked against `reward_weights`) and its prepared training and held-out prompts
    (`prepare_prompts`; `render`: every prompt as text), every reward's columns checked before any training.
    Returns `(reward_funcs, train_dataset, eval_dataset or None)`; shared with recipes/spo.py."""
    reward_funcs = reward_functions(data_args)
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(reward_funcs):
        raise RecipeError(f"reward_weights: {len(weights)} weights for {len(reward_funcs)} reward_funcs")
    train_files, eval_files = data_args.files(data_args.curriculum_stage)
    prepare = {
        "max_prompt_length": data_args.max_prompt_length,
        "thinking_ratio": data_args.thinking_ratio,
        "chat_template_kwargs": training_args.chat_template_kwargs,
        "seed": training_args.seed,
        "render": render,
        "trainer_tools": trainer_tools,
    }
    train_dataset = prepare_prompts(load_rl_dataset(train_files), tokenizer, **prepare)
    eval_dataset = prepare_prompts(load_rl_dataset(eval_files), tokenizer, **prepare) if eval_files else None
    # A reward that needs a column the prompts lack or leave empty (e.g. `gt`) stops here, not at the first step.
    check_reward_data(reward_funcs, train_dataset, train_files)
    return reward_funcs, train_dataset, eval_dataset


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((GRPODataArguments, GRPOConfig, ModelArguments))


def main(data_args: GRPODataArguments, training_args: GRPOConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    if training_args.beta > 0 and not model_args.model_name_or_path and not model_args.use_peft:
        raise RecipeError(
            "beta: TRL reloads the reference policy from `model_name_or_path`; a fresh `preset` model has none "
            "(set beta 0, or start from a saved model)"
        )
    tokenizer = recipe_tokenizer(model_args)
    tools = build_tools(data_args)
    if tools and getattr(tokenizer, "response_template", None) is None:
        tokenizer.response_template = RESPONSE_TEMPLATE  # a tokenizer saved before the package shipped it
    reward_funcs, train_dataset, eval_dataset = rewards_and_prompts(
        data_args, training_args, tokenizer, trainer_tools=tools is not None
    )
    model = build_model(model_args, tokenizer, seed=training_args.seed)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, model),
        tools=tools,
    )
    compact_trainer_heads(trainer, training_args.temperature)  # TRL's fused head on the completions only
    train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
