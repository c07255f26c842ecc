"""What our on-policy trainers (recipes/spo.py, recipes/ppo.py) share: sampling completions of rendered prompts with
`model.generate`, the tempered log-probs of those completions, and their rewards from `minimind_hf.rewards`.

Ours because TRL's `GRPOTrainer` keeps the same steps inside its own loop (it needs at least two completions per
prompt and has no critic), so trainers that need one completion per prompt or a value model cannot reuse them.
The conventions are TRL GRPO's: prompts left-padded and completions right-padded; a completion counts up to and
including its first end-of-sequence token; log-probs are of the sampling distribution (logits divided by
`temperature`); a reward that does not apply to a row (`None`) counts 0 in the weighted sum; each reward function's
mean is logged as `rewards/<name>/mean` and the weighted sum's as `reward`.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from ..rl import call_rewards
from ..training import RecipeError


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first `eos_token_id`, 0 after (long)."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids)
    is_eos = completion_ids == eos_token_id
    before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()  # eos tokens strictly before each position
    return (before == 0).long()


@dataclass
class RolloutConfig(TrainingArguments):
    """The Trainer's arguments plus what every rollout needs: sampling, the KL weight and the rewards' weights."""

    max_completion_length: int = field(default=256, metadata={"help": "Most tokens generated per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    beta: float = field(
        default=0.0, metadata={"help": "Weight of the k3 KL to the frozen start policy (0: no reference kept)."}
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (default: 1 each)."}
    )
    chat_template_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Chat template options for every prompt, e.g. `{enable_thinking: false}`."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: rewards read the columns."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.chat_template_kwargs, str):
            self.chat_template_kwargs = json.loads(self.chat_template_kwargs)
        if self.max_completion_length < 1 or not self.temperature > 0:
            raise RecipeError("need max_completion_length >= 1 and temperature > 0")


class RolloutTrainer(Trainer):
    """`transformers.Trainer` plus rollouts, with a [`RolloutConfig`] (`beta > 0` keeps a frozen copy of the start
    policy as `ref_model`). Prompts are text (`minimind_hf.rl.prepare_prompts(render=True)`)."""

    def __init__(self, model, args, train_dataset, processing_class, reward_funcs, policy=None, **kwargs):
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, **kwargs
        )
        self.reward_funcs = reward_funcs
        # reward_weights' length is checked with the rewards (recipes.grpo.rewards_and_prompts)
        self.reward_weight_values = torch.tensor(args.reward_weights or [1.0] * len(reward_funcs), dtype=torch.float64)
        start = policy if policy is not None else model
        self.ref_model = None
        if args.beta > 0:
            self.ref_model = copy.deepcopy(start).eval().requires_grad_(False).to(args.device)
        self._rollout_metrics: dict[str, list[float]] = defaultdict(list)

    def _prompt_ids(self, rows: list[dict]) -> list[list[int]]:
        return [self.processing_class(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]

    def _generate(self, model, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampled completion per prompt: `(completion_ids, mask)`, right-padded, mask through the first EOS."""
        tokenizer, device = self.processing_class, self.args.device
        width = max(len(p) for p in prompt_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        model = self.accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    do_sample=True,
                    temperature=self.args.temperature,
                    top_p=self.args.top_p,
                    top_k=0,
                    max_new_tokens=self.args.max_completion_length,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                )
        finally:
            model.train(was_training)
        completion = out[:, width:]
        return completion, completion_mask(completion, tokenizer.eos_token_id)

    def _model_inputs(self, prompt_ids: list[list[int]], completions: list[torch.Tensor]) -> tuple[dict, int]:
        """Prompts left-padded and completions right-padded to one width: `(inputs, prompt width)`, with the position
        ids `generate` gave left-padded prompts."""
        width = max(len(p) for p in prompt_ids)
        length = max(max(len(c) for c in completions), 1)
        rows, masks = [], []
        for p, c in zip(prompt_ids, completions):
            c = [int(t) for t in c]
            rows.append([0] * (width - len(p)) + p + c + [0] * (length - len(c)))
            masks.append([0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c)))
        input_ids = torch.tensor(rows, device=self.args.device)
        attention = torch.tensor(masks, device=self.args.device)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids}, width

    def _logps(self, model, prompt_ids: list[list[int]], completions: list[torch.Tensor]) -> tuple:
        """Log-probs of each completion's tokens after its prompt (tempered logits): `(logp, mask)`, both
        `(batch, tokens)`; mask is 1 on each completion's own tokens."""
        inputs, width = self._model_inputs(prompt_ids, completions)
        logits = model(**inputs, logits_to_keep=self._kept(inputs["input_ids"], width)).logits
        logp = self._completion_logps(logits, inputs["input_ids"], width)
        return logp, inputs["attention_mask"][:, width:]

    @staticmethod
    def _kept(input_ids: torch.Tensor, width: int) -> int:
        """The `logits_to_keep` that scores the completions after position `width`: the LM head runs on the last
        prompt position and the completion positions only, not on the prompts."""
        return input_ids.shape[1] - width + 1

    def _completion_logps(self, logits: torch.Tensor, input_ids: torch.Tensor, width: int) -> torch.Tensor:
        """Log-probs of the tokens after position `width` (the completions) under `logits` divided by `temperature`;
        `logits` covers every position or the last `_kept` ones."""
        logits = logits[:, -self._kept(input_ids, width) : -1].float() / self.args.temperature
        targets = input_ids[:, width:]
        return torch.gather(torch.log_softmax(logits, dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)

    def _weighted_rewards(self, rows: list[dict], completion_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weighted reward of each completion (float64, on the CPU); per-function means logged."""
        texts = [
            self.processing_class.decode(ids[m.bool()], skip_special_tokens=True)
            for ids, m in zip(completion_ids.cpu(), mask.cpu())
        ]
        per_func = call_rewards(self.reward_funcs, rows, texts, self.processing_class)
        table = torch.tensor([per_func[fn.__name__] for fn in self.reward_funcs], dtype=torch.float64).T
        for fn, column in zip(self.reward_funcs, table.T):
            finite = column[~column.isnan()]
            if len(finite):
                self._rollout_metrics[f"rewards/{fn.__name__}/mean"].append(finite.mean().item())
        total = (table * self.reward_weight_values).nansum(dim=1)
        self._rollout_metrics["reward"].append(total.mean().item())
        return total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._rollout_metrics:  # training logs: add the means since the last log
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._rollout_metrics.items() if v}}
            self._rollout_metrics.clear()
        super().log(logs, start_time)


__all__ = ["RolloutConfig", "RolloutTrainer", "completion_mask"]
