"""Single-stream policy optimisation (SPO, Xu & Ding, arXiv 2509.13232) from an SFT checkpoint, on verifiable rewards:
one completion per prompt, a per-prompt value tracker as the baseline, prioritised prompt sampling.

Ours: TRL has no SPO trainer, and its GRPOConfig refuses `num_generations < 2`, so GRPOTrainer cannot run a single
stream. The arithmetic (Beta tracker with KL-adaptive forgetting, batch-normalised advantages, the sampler's weights)
is `minimind_hf.spo.ValueTracker`; this recipe is the loop around it, a small `transformers.Trainer` subclass
([`SPOTrainer`]). What is the Trainer's: the optimiser, scheduler, gradient accumulation, mixed precision, logging,
checkpoints. What is ours: each micro-batch draws `per_device_train_batch_size` prompts with the tracker's
prioritised sampler (seeded from `seed`), samples one completion per prompt with `model.generate`, scores it with the
rewards, takes the advantages from the tracker (before this batch's rewards are absorbed), then updates the tracker
with the rewards and each prompt's policy divergence `D` (the token mean of `|log pi_then - log pi_now|` over the
response the prompt got at its previous visit; 0 on a first visit). The loss is the token mean over completion tokens
(up to and including the first end-of-sequence token) of `-A * log pi + beta * k3(log pi, log pi_ref)`: a policy
gradient with the tracker's baseline. Each rollout is used for exactly one update, so PPO's importance ratio is 1 and
its clipping never acts; it is left out. The reference for the k3 KL is a frozen copy of the start model (`beta: 0`
keeps none). Log-probs are those of the sampling distribution (logits divided by `temperature`, as TRL's GRPO).

Rewards come from `minimind_hf.rewards` by name (`reward_funcs`, weighted by `reward_weights`), as in recipes/grpo.py;
a reward that does not apply to a row (`None`) counts 0 in the weighted sum, as in TRL. The tracker reads rewards as
success probabilities, so the weighted sum is mapped linearly from [`reward_min`, `reward_max`] to [0, 1] (default:
[0, 1], i.e. unchanged, right for `exact_answer`'s 0/1); a step whose mapped reward leaves [0, 1] stops with an error
naming the range. Upstream MiniMind's SPO squashes its [-3, 3] rewards the same way, with `(r + 3) / 6`.

Logged to `trainer_state.json`: `reward` and `rewards/<name>/mean`, the raw advantage `r - v(x)` before
normalisation (`advantage/raw_mean`, `advantage/raw_std`), `kl` (mean k3 to the reference), `tracker/value_mean`
(the batch's prompts' values after the update), `tracker/divergence` and `tracker/rho`, `completions/mean_length`.
The tracker is saved as `spo_tracker.json` beside the model (and in each checkpoint; a resumed run reloads it, but
not the prompts' last responses, so each prompt's first visit after a resume has `D = 0`). One process only: the
tracker is not shared between ranks.

    python recipes/spo.py --config recipes/tiny/spo.yaml   # CPU, from the quickstart's SFT output
    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/spo.py \
        --config recipes/minimind2-small/spo.yaml
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from minimind_hf.ppo import k3_kl, masked_mean
from minimind_hf.spo import ValueTracker, policy_divergence
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
    write_json,
)
from recipes.grpo import GRPODataArguments, rewards_and_prompts

TRACKER_FILE = "spo_tracker.json"


@dataclass
class SPODataArguments(GRPODataArguments):
    """GRPO's data arguments: RL prompts, `reward_funcs`, `reward_kwargs`, `max_prompt_length`, `thinking_ratio`."""


@dataclass
class SPOConfig(RolloutConfig):
    """The rollout arguments (sampling, `beta`, `reward_weights`) plus SPO's: the tracker's constants (the authors'
    defaults) and how rewards are mapped to [0, 1]. `per_device_train_batch_size` counts prompts, one completion
    each."""

    d_half: float = field(
        default=0.06, metadata={"help": "Divergence at which half a tracker's evidence is forgotten."}
    )
    rho_min: float = field(default=0.875, metadata={"help": "Smallest forgetting factor."})
    rho_max: float = field(default=0.96, metadata={"help": "Largest forgetting factor (a first visit's)."})
    offline_samples: int = field(
        default=0,
        metadata={"help": "Completions per prompt from the start model that initialise its tracker (0: the prior)."},
    )
    epsilon: float = field(default=0.05, metadata={"help": "Floor added to every prompt's sampling weight."})
    gamma: float = field(default=0.0, metadata={"help": "Exponent of the effective sample size in the weights."})
    reward_min: float = field(default=0.0, metadata={"help": "Weighted reward mapped to 0 for the tracker."})
    reward_max: float = field(default=1.0, metadata={"help": "Weighted reward mapped to 1 for the tracker."})

    def __post_init__(self):
        super().__post_init__()
        if not self.reward_max > self.reward_min:
            raise RecipeError(f"reward_min {self.reward_min} must be below reward_max {self.reward_max}")
        if self.offline_samples < 0:
            raise RecipeError("need offline_samples >= 0")


def spo_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token mean over the counted tokens of `-A * logp + beta * k3(logp, ref_logp)`.

    Args:
        logp, ref_logp: `(batch, tokens)` completion log-probs under the policy and the reference (None: no KL).
        advantages: `(batch,)` one advantage per completion, broadcast over its tokens.
        mask: `(batch, tokens)`, 1 on counted completion tokens.
    """
    per_token = -advantages.to(logp.dtype).unsqueeze(-1) * logp
    stats = {}
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(masked_mean(kl.detach(), mask))
    return masked_mean(per_token, mask), stats


class TrackerBatchSampler(Sampler):
    """Batches of dataset rows drawn by the tracker's prioritised sampler, lazily, so each batch sees the tracker as
    the last step left it. `len` is one pass's worth of batches."""

    def __init__(self, tracker: ValueTracker, num_rows: int, batch_size: int, seed: int):
        self.tracker, self.ids, self.batch_size = tracker, list(range(num_rows)), batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.ids) / self.batch_size)

    def __iter__(self):
        for _ in range(len(self)):
            yield self.tracker.sample(self.ids, self.batch_size, generator=self.generator)


class SPOTrainer(RolloutTrainer):
    """`RolloutTrainer` (a `transformers.Trainer`) with SPO's rollout and loss in `compute_loss` (see the module
    docstring)."""

    def __init__(self, model, args: SPOConfig, train_dataset, processing_class, reward_funcs, **kwargs):
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            reward_funcs=reward_funcs,
            **kwargs,
        )
        self.tracker = ValueTracker(
            d_half=args.d_half, rho_min=args.rho_min, rho_max=args.rho_max, epsilon=args.epsilon, gamma=args.gamma
        )
        # Per prompt, its last response: prompt ids, response ids (counted tokens) and their log-probs then.
        self.last_response: dict[int, tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    # -- data --------------------------------------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        # Not passed through accelerate's prepare: its loader reads one batch ahead, which would draw the next
        # prompts before this step's rewards reach the tracker. Batches hold row indices; compute_loss reads the rows.
        sampler = TrackerBatchSampler(
            self.tracker, len(self.train_dataset), self.args.per_device_train_batch_size, self.args.seed
        )
        return DataLoader(
            range(len(self.train_dataset)),
            batch_sampler=sampler,
            collate_fn=lambda rows: {"prompt_index": torch.tensor(rows, dtype=torch.long)},
        )

    # -- rollout -----------------------------------------------------------------------------------------------

    def _scores(self, rows: list[dict], completion_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weighted reward of each completion mapped to [0, 1] (per-function means logged)."""
        total = self._weighted_rewards(rows, completion_ids, mask)
        low, high = self.args.reward_min, self.args.reward_max
        mapped = (total - low) / (high - low)
        if ((mapped < -1e-9) | (mapped > 1 + 1e-9)).any():
            raise ValueError(
                f"SPO: weighted rewards {total.tolist()} leave [reward_min, reward_max] = [{low}, {high}]; the value "
                "tracker needs them mapped to [0, 1]: set reward_min / reward_max to the weighted sum's range"
            )
        return mapped.clamp(0.0, 1.0)

    def _divergences(self, model, ids: list[int]) -> torch.Tensor:
        """`D` per prompt: its previous response's log-probs then vs under the current policy (0 if none)."""
        d = torch.zeros(len(ids), dtype=torch.float64)
        seen = [i for i, pid in enumerate(ids) if pid in self.last_response]
        if seen:
            prompts, responses, then = zip(*(self.last_response[ids[i]] for i in seen))
            with torch.no_grad():
                now, mask = self._logps(model, list(prompts), list(responses))
            padded = torch.zeros_like(now)
            for row, old in enumerate(then):
                padded[row, : len(old)] = old.to(padded)
            d[seen] = policy_divergence(padded, now, mask).cpu()
        return d

    def initialize_tracker(self, model) -> None:
        """`offline_samples` completions of the start model per prompt initialise each prompt's tracker."""
        n0, size = self.args.offline_samples, self.args.per_device_train_batch_size
        if n0 == 0:
            return
        rows = [dict(r) for r in self.train_dataset]
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            prompt_ids = self._prompt_ids(chunk)
            rewards = [[] for _ in chunk]
            for _ in range(n0):
                completion, mask = self._generate(model, prompt_ids)
                for i, r in enumerate(self._scores(chunk, completion, mask).tolist()):
                    rewards[i].append(r)
            for i, r in enumerate(rewards):
                self.tracker.initialize(start + i, r)
        self._rollout_metrics.clear()

    # -- loss --------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs["prompt_index"].tolist()
        rows = [dict(self.train_dataset[i]) for i in ids]
        prompt_ids = self._prompt_ids(rows)
        completion, mask = self._generate(model, prompt_ids)
        rewards = self._scores(rows, completion, mask)
        raw = rewards - self.tracker.value(ids)
        advantages = self.tracker.advantages(ids, rewards).to(self.args.device)
        divergence = self._divergences(model, ids)
        rho = self.tracker.update(ids, rewards, divergence)

        completions = [c[m.bool()] for c, m in zip(completion, mask)]
        logp, logp_mask = self._logps(model, prompt_ids, completions)
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logp, _ = self._logps(self.ref_model, prompt_ids, completions)
        loss, stats = spo_loss(logp, ref_logp, advantages, logp_mask, self.args.beta)
        for i, (pid, tokens) in enumerate(zip(ids, completions)):
            n = len(tokens)
            self.last_response[pid] = (prompt_ids[i], tokens.cpu(), logp[i, :n].detach().float().cpu())

        metrics = self._rollout_metrics
        metrics["advantage/raw_mean"].append(raw.mean().item())
        metrics["advantage/raw_std"].append(raw.std().item() if len(raw) > 1 else 0.0)
        metrics["tracker/value_mean"].append(self.tracker.value(ids).mean().item())
        metrics["tracker/divergence"].append(divergence.mean().item())
        metrics["tracker/rho"].append(rho.mean().item())
        metrics["completions/mean_length"].append(mask.sum(-1).float().mean().item())
        for key, value in stats.items():
            metrics[key].append(value)
        return loss

    # -- logs and saving ---------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():
            write_json(Path(output_dir or self.args.output_dir) / TRACKER_FILE, self.tracker.state_dict())


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((SPODataArguments, SPOConfig, ModelArguments))


def main(data_args: SPODataArguments, training_args: SPOConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    if training_args.world_size > 1:
        raise RecipeError("SPO runs in one process: its value tracker is not shared between ranks")
    if data_args.eval_files or training_args.eval_strategy != "no":
        raise RecipeError(
            "eval_files / eval_strategy: the SPO recipe has no evaluation loop (its loss samples and updates the "
            "tracker); measure a saved policy with minimind_hf.rl.reward_report"
        )
    if model_args.use_peft:
        raise RecipeError("use_peft: the SPO recipe trains the full model (LoRA is not wired in)")
    tokenizer = recipe_tokenizer(model_args)
    # Every prompt rendered to text once, here, not at every step.
    reward_funcs, train_dataset, _ = rewards_and_prompts(data_args, training_args, tokenizer, render=True)
    model = build_model(model_args, tokenizer, seed=training_args.seed)
    trainer = SPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
    )
    if resume_from and (Path(resume_from) / TRACKER_FILE).is_file():
        trainer.tracker.load_state_dict(json.loads((Path(resume_from) / TRACKER_FILE).read_text()))
    else:
        trainer.initialize_tracker(trainer.model)
    train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
