"""Proximal policy optimisation with a critic (PPO) from an SFT checkpoint, on the rewards of `minimind_hf.rewards`:
token-level GAE, clipped policy and value losses, k3 KL to a frozen reference inside the loss, whitened advantages and
an approximate-KL early stop, as upstream MiniMind HEAD's `train_ppo.py`.

Ours: TRL's PPO trainer left after 1.12 (`trl.experimental.ppo`), and that one put the KL penalty into the per-token
reward where upstream adds `beta * k3` to the policy loss; TRL's GRPO-family trainers have no critic. The arithmetic is
`minimind_hf.ppo` (checked against hand-computed examples); this recipe is the loop around it, a
`transformers.Trainer` subclass ([`PPOTrainer`]) whose model is the policy and the value model side by side
([`PolicyAndValue`]), so the Trainer's optimiser, scheduler, gradient clipping, mixed precision, logging and
checkpoints cover both (the value model gets its own `value_learning_rate`, as upstream's separate critic optimiser).

One rollout: `rollout_batch_size` prompts (a seeded shuffle of the data, `floor(rows / rollout_batch_size)` rollouts
per epoch), one sampled completion each (`model.generate`, as upstream's `num_generations=1`), the weighted reward on
each completion's last counted token, the value model's value of every completion position, GAE (`gamma`, `lam`),
returns `A + V`, advantages whitened over the rollout's counted tokens. Then `num_ppo_epochs` passes over the rollout
in shuffled minibatches of `per_device_train_batch_size` completions, one Trainer step each (so a rollout is
`num_ppo_epochs * rollout_batch_size / per_device_train_batch_size` steps, and `max_steps` counts minibatch updates):
loss `policy_loss + vf_coef * value_loss` with the policy loss `max(-A r, -A clip(r, 1 +- cliprange)) + beta * k3`
and the value loss clipped around the rollout's values (`cliprange_value`). When a minibatch's approximate KL
`mean(0.5 (log r)^2)` exceeds `early_stop_kl`, it and the rest of the rollout's minibatches make no update (their
steps run no backward, so the optimiser skips every parameter), as upstream zeroes their loss; the next rollout
starts fresh. Log-probs are of the sampling distribution (logits divided by `temperature`, as TRL's GRPO).

Where it differs from upstream: the value model is a `MiniMindForSequenceClassification` (backbone + `score` head,
values read at every position), so it initialises from the SFT model (fresh head) or from a reward-model folder
(recipes/reward.py: the head too) through `value_model_name_or_path`; upstream's critic re-applies the final norm to
already-normed states, ours does not. Rewards are the registry's (a reward-model folder among them), not a fixed
reward model plus rules. One process only for now: rollouts and the early stop are not synchronised between ranks.

Logged to `trainer_state.json`: `reward` and `rewards/<name>/mean`, `kl` (mean k3 to the reference), `policy_loss`,
`value_loss`, `clip_fraction`, `value_clip_fraction`, `approx_kl`, `explained_variance` (the rollout's values against
its returns), `value_mean`, `completions/mean_length` and `early_stopped` (the share of steps that made no update).
The saved folder is the policy (`AutoModelForCausalLM`), with the value model in `value_model/`.

    python recipes/ppo.py --config recipes/tiny/ppo.yaml   # CPU, from the quickstart's SFT output
    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/ppo.py \
        --config recipes/minimind2-small/ppo.yaml
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.trainer import TRAINING_ARGS_NAME

from minimind_hf.ppo import explained_variance, gae, last_token_rewards, masked_mean, policy_loss, value_loss, whiten
from minimind_hf.trainers.rollout import RolloutConfig, RolloutTrainer
from minimind_hf.training import (
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
from recipes.grpo import GRPODataArguments, rewards_and_prompts

VALUE_DIR = "value_model"


@dataclass
class PPODataArguments(GRPODataArguments):
    """GRPO's data arguments: RL prompts, `reward_funcs`, `reward_kwargs`, `max_prompt_length`, `thinking_ratio`."""


@dataclass
class PPOConfig(RolloutConfig):
    """The rollout arguments (sampling, `beta`, `reward_weights`) plus PPO's (defaults: upstream MiniMind HEAD's
    `train_ppo.py`). `per_device_train_batch_size` is the minibatch: completions per update."""

    rollout_batch_size: int = field(default=2, metadata={"help": "Prompts per rollout, one completion each."})
    num_ppo_epochs: int = field(default=2, metadata={"help": "Passes over each rollout (upstream: ppo_update_iters)."})
    max_completion_length: int = field(default=1024, metadata={"help": "Most tokens generated per completion."})
    beta: float = field(
        default=0.02,
        metadata={"help": "Weight of the k3 KL to the frozen start policy in the loss (upstream kl_coef)."},
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip of the values around the rollout's."})
    vf_coef: float = field(default=0.5, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    early_stop_kl: float | None = field(
        default=0.25, metadata={"help": "Approximate KL that ends a rollout's updates (null: never)."}
    )
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over the rollout."})
    value_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Value model's start: an SFT folder (fresh head) or a reward-model folder (default: the policy's)."
        },
    )
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "The value model's learning rate (default: learning_rate)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.rollout_batch_size % self.per_device_train_batch_size:
            raise RecipeError(
                f"rollout_batch_size {self.rollout_batch_size} must be a multiple of per_device_train_batch_size "
                f"{self.per_device_train_batch_size} (the minibatch)"
            )
        if self.num_ppo_epochs < 1:
            raise RecipeError("need num_ppo_epochs >= 1")

    @property
    def steps_per_rollout(self) -> int:
        return self.num_ppo_epochs * self.rollout_batch_size // self.per_device_train_batch_size


class PolicyAndValue(nn.Module):
    """The policy (a causal LM) and the value model (a `MiniMindForSequenceClassification`, one label) as one module,
    so one optimiser, scheduler and checkpoint cover both. `forward` returns the policy's logits (of the last
    `logits_to_keep` positions when given: the completions, not the prompts) and the value of every position."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0):
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
        ).logits
        hidden = self.value_model.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return logits, self.value_model.score(hidden).squeeze(-1)


class RolloutBatchSampler(Sampler):
    """Each rollout's prompt indices (a seeded shuffle per pass, `rollout_size` at a time, the remainder dropped),
    repeated once per step the rollout feeds."""

    def __init__(self, num_rows: int, rollout_size: int, repeats: int, seed: int):
        if num_rows < rollout_size:
            raise RecipeError(f"rollout_batch_size {rollout_size} is more than the {num_rows} prompts")
        self.num_rows, self.rollout_size, self.repeats = num_rows, rollout_size, repeats
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_rows // self.rollout_size * self.repeats

    def __iter__(self):
        order = torch.randperm(self.num_rows, generator=self.generator).tolist()
        for start in range(0, self.num_rows // self.rollout_size * self.rollout_size, self.rollout_size):
            for _ in range(self.repeats):
                yield order[start : start + self.rollout_size]


class PPOTrainer(RolloutTrainer):
    """`RolloutTrainer` (a `transformers.Trainer`) with PPO's rollout, minibatches and early stop in `training_step`
    (see the module docstring). `model` is a [`PolicyAndValue`]."""

    def __init__(
        self, model: PolicyAndValue, args: PPOConfig, train_dataset, processing_class, reward_funcs, **kwargs
    ):
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            reward_funcs=reward_funcs,
            policy=model.policy,
            **kwargs,
        )
        self.buffer: dict | None = None
        self.buffer_step = 0  # steps taken from the current rollout
        self.minibatch_generator = torch.Generator().manual_seed(args.seed)

    def get_train_dataloader(self) -> DataLoader:
        # Batches hold row indices; training_step reads the rows when it starts a rollout.
        sampler = RolloutBatchSampler(
            len(self.train_dataset), self.args.rollout_batch_size, self.args.steps_per_rollout, self.args.seed
        )
        return DataLoader(
            range(len(self.train_dataset)),
            batch_sampler=sampler,
            collate_fn=lambda rows: {"prompt_index": torch.tensor(rows, dtype=torch.long)},
        )

    def create_optimizer(self, model=None):
        """Trainer's optimiser with the policy's and the value model's parameters in their own groups, each split by
        weight decay as the Trainer splits them; the value model's groups take `value_learning_rate`."""
        if self.optimizer is None:
            net = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(net))
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, net)
            value_lr = self.args.value_learning_rate or self.args.learning_rate
            groups = []
            for prefix, lr in (("policy.", self.args.learning_rate), ("value_model.", value_lr)):
                for decays, weight_decay in ((True, self.args.weight_decay), (False, 0.0)):
                    params = [
                        p
                        for n, p in net.named_parameters()
                        if n.startswith(prefix) and (n in decay) == decays and p.requires_grad
                    ]
                    if params:
                        groups.append({"params": params, "weight_decay": weight_decay, "lr": lr})
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- rollout -----------------------------------------------------------------------------------------------

    def _rollout(self, net: PolicyAndValue, ids: list[int]) -> dict:
        """Sample, score and evaluate one rollout: the inputs, masks, old log-probs, reference log-probs, values,
        advantages and returns of its completions."""
        rows = [dict(self.train_dataset[i]) for i in ids]
        prompt_ids = self._prompt_ids(rows)
        completion, mask = self._generate(net.policy, prompt_ids)
        scores = self._weighted_rewards(rows, completion, mask)
        completions = [c[m.bool()] for c, m in zip(completion, mask)]
        inputs, width = self._model_inputs(prompt_ids, completions)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                logits, values = net(**inputs, logits_to_keep=self._kept(inputs["input_ids"], width))
                old_logp = self._completion_logps(logits, inputs["input_ids"], width)
                ref_logp = None
                if self.ref_model is not None:
                    ref_logits = self.ref_model(**inputs, logits_to_keep=self._kept(inputs["input_ids"], width)).logits
                    ref_logp = self._completion_logps(ref_logits, inputs["input_ids"], width)
        finally:
            net.train(was_training)
        counted = inputs["attention_mask"][:, width:]
        values = values[:, width - 1 : -1].float() * counted
        rewards = last_token_rewards(scores.to(values), counted)
        advantages, returns = gae(rewards, values, counted, gamma=self.args.gamma, lam=self.args.lam)
        if self.args.whiten_advantages:
            advantages = whiten(advantages, counted)
        metrics = self._rollout_metrics
        metrics["explained_variance"].append(explained_variance(values, returns, counted))
        metrics["value_mean"].append(float(masked_mean(values, counted)))
        metrics["completions/mean_length"].append(mask.sum(-1).float().mean().item())
        return {
            "inputs": inputs,
            "width": width,
            "mask": counted,
            "old_logp": old_logp,
            "ref_logp": ref_logp,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "stopped": False,
        }

    def _minibatch_rows(self, step: int) -> torch.Tensor:
        """Rows of the rollout for its `step`-th minibatch: a fresh shuffle at the start of each pass."""
        size, per_pass = self.args.per_device_train_batch_size, self.args.rollout_batch_size
        if step * size % per_pass == 0:
            self.buffer["order"] = torch.randperm(per_pass, generator=self.minibatch_generator)
        start = step * size % per_pass
        return self.buffer["order"][start : start + size]

    # -- one step ----------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        net = self.accelerator.unwrap_model(model)
        if self.buffer is None or self.buffer_step == self.args.steps_per_rollout:
            self.buffer, self.buffer_step = self._rollout(net, inputs["prompt_index"].tolist()), 0
        rows = self._minibatch_rows(self.buffer_step)
        self.buffer_step += 1
        metrics = self._rollout_metrics
        model.train()
        if self.buffer["stopped"]:
            metrics["early_stopped"].append(1.0)
            return torch.zeros((), device=self.args.device)
        b = self.buffer
        batch = {k: v[rows] for k, v in b["inputs"].items()}
        mask = b["mask"][rows]
        with self.compute_loss_context_manager():
            logits, values = model(**batch, logits_to_keep=self._kept(batch["input_ids"], b["width"]))
        logp = self._completion_logps(logits, batch["input_ids"], b["width"])
        values = values[:, b["width"] - 1 : -1].float()
        ref_logp = b["ref_logp"][rows] if b["ref_logp"] is not None else None
        p_loss, p_stats = policy_loss(
            logp, b["old_logp"][rows], b["advantages"][rows], mask, self.args.cliprange, ref_logp, self.args.beta
        )
        limit = self.args.early_stop_kl
        if limit is not None and p_stats["approx_kl"] > limit:
            b["stopped"] = True
            metrics["early_stopped"].append(1.0)
            metrics["approx_kl"].append(p_stats["approx_kl"])
            return torch.zeros((), device=self.args.device)
        v_loss, v_stats = value_loss(values, b["values"][rows], b["returns"][rows], mask, self.args.cliprange_value)
        loss = p_loss + self.args.vf_coef * v_loss  # a non-finite loss: training.NonFiniteGuard stops or skips
        metrics["early_stopped"].append(0.0)
        metrics["policy_loss"].append(p_loss.item())
        metrics["value_loss"].append(v_loss.item())
        for key, value in {**p_stats, **v_stats}.items():
            metrics[key].append(value)
        loss = loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()

    # -- saving ------------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy as a causal-LM folder, the value model in `value_model/`, the tokenizer and the arguments."""
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        net = self.accelerator.unwrap_model(self.model)
        net.policy.save_pretrained(output_dir)
        net.value_model.save_pretrained(output_dir / VALUE_DIR)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        net = self.accelerator.unwrap_model(model if model is not None else self.model)
        folder = Path(resume_from_checkpoint)
        for module, auto, path in (
            (net.policy, AutoModelForCausalLM, folder),
            (net.value_model, AutoModelForSequenceClassification, folder / VALUE_DIR),
        ):
            if not (path / "config.json").is_file():
                raise RecipeError(f"resume_from_checkpoint: {path} holds no model (config.json missing)")
            module.load_state_dict(auto.from_pretrained(path, dtype=module.dtype).state_dict())


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((PPODataArguments, PPOConfig, ModelArguments))


def main(data_args: PPODataArguments, training_args: PPOConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    if training_args.world_size > 1:
        raise RecipeError("PPO runs in one process: its rollouts and early stop are not synchronised between ranks")
    if data_args.eval_files or training_args.eval_strategy != "no":
        raise RecipeError(
            "eval_files / eval_strategy: the PPO recipe has no evaluation loop; measure a saved policy with "
            "minimind_hf.rl.reward_report"
        )
    if model_args.use_peft:
        raise RecipeError("use_peft: the PPO recipe trains the full policy and value model (LoRA is not wired in)")
    if training_args.activation_checkpointing:
        raise RecipeError("activation_checkpointing: not wired into the PPO recipe's policy-and-value module")
    tokenizer = recipe_tokenizer(model_args)
    reward_funcs, train_dataset, _ = rewards_and_prompts(data_args, training_args, tokenizer, render=True)
    policy = build_model(model_args, tokenizer, seed=training_args.seed)
    value_args = model_args
    if training_args.value_model_name_or_path:
        value_args = ModelArguments(
            model_name_or_path=training_args.value_model_name_or_path,
            dtype=model_args.dtype,
            attn_implementation=model_args.attn_implementation,
        )
    value_model = build_model(value_args, tokenizer, seed=training_args.seed, num_labels=1)
    trainer = PPOTrainer(
        model=PolicyAndValue(policy, value_model),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
    )
    train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
