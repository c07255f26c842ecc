"""Each post-training stage does what it exists for, on the embedded curriculum, from a tiny SFT model (CPU, slow).

The SFT base is the quickstart's pretrain and SFT recipes with `recipes/tiny/pretrain.yaml` and
`recipes/tiny/sft.yaml`, the SFT without its pretraining replay (`--replay_docs 0`: the base every threshold below
and the table in recipes/README.md were measured on; about 9 minutes on 2 CPU cores), built once and cached on disk
(`tests/utils.build_sft_base`; `make test-slow-bases` builds it); set `MINIMIND_HF_SFT_BASE` to an existing SFT
folder (e.g. `outputs/quickstart/sft`) to use another. It answers 79% of
held-out questions about people SFT talked about and 60% about people only the pretraining prose mentions, so "LoRA
keeps the facts" is a guard with room to fail. Every test prints its measurements (`pytest -m slow -s` shows them):

- LoRA: the new name in >= 90% and the name or maker in >= 75% of held-out identity prompts, trainable parameters
  reported, merged logits = adapter logits (<= 1e-5); held-out world-fact accuracy down <= 5 points is a strict
  xfail (the recipe forgets; see the marker);
- DPO: held-out preference accuracy (above all on pairs about names that exist nowhere in the curriculum, where the
  SFT start prefers an invented answer to "I don't know") and chosen - rejected margin rise over the SFT start, while
  greedy answers to known-entity questions survive;
- distillation: held-out student-teacher KL falls, and ends below the same student trained by cross-entropy alone;
- reasoning: >= 90% well-formed think/answer generations with thinking on and off, >= 90% of thinking-on blocks
  hold steps; accuracy reported for both beside the best constant answer's (the tiny model does not learn the
  arithmetic).
"""

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.chat_templates import use_training_chat_template
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.data import EMPTY_THINK
from minimind_hf.evaluation import (
    evaluate_model,
    evaluate_with_breakdown,
    load_eval_records,
    make_generate_fn,
    preference_accuracy,
    preference_margins,
    score,
)
from minimind_hf.lora import load_lora_model
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import write_json
from recipes import distill, dpo, lora, merge_lora, reason
from tests.utils import build_sft_base

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MINIMIND_HF_CURRICULUM_SEED", "0"))
REPORT_ENV = "MINIMIND_HF_EFFECTS_REPORT"
TINY = ROOT / "recipes" / "tiny"
QUIET = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "10", "--curriculum_seed", str(SEED)]


def report(stage: str, **numbers) -> None:
    """Prints a stage's measurements; with `MINIMIND_HF_EFFECTS_REPORT` set (recipes/seeds.py sets it), also merges
    them into that JSON file under the stage's name."""
    print(f"\n[{stage} seed {SEED}] " + json.dumps(numbers, ensure_ascii=False))
    path = os.environ.get(REPORT_ENV)
    if path:
        merged = json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else {}
        write_json(path, {**merged, stage: numbers}, indent=1)


@pytest.fixture(scope="session")
def curriculum():
    """The curriculum of `MINIMIND_HF_CURRICULUM_SEED` (default 0); every recipe below trains on the same seed."""
    return ensure_curriculum(seed=SEED)


def build_base(tmp_path_factory):
    """This module's SFT base (cached; `tests/test_sft_bases.py` builds and checks it as its own slow-tier part)."""
    return build_sft_base(tmp_path_factory, QUIET, "--replay_docs", "0")


@pytest.fixture(scope="session")
def sft_base(tmp_path_factory):
    return build_base(tmp_path_factory)


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer(folder)


def world_accuracy(model, tokenizer, curriculum) -> tuple[float, dict[str, float]]:
    """Held-out chat QA over every split, and its breakdown per split and entity kind (`pretrain_only.person`)."""
    generate = make_generate_fn(model, tokenizer, batch_size=64, max_new_tokens=32)
    means, groups = evaluate_with_breakdown(load_eval_records(curriculum["sft"]["eval"]), generate)
    kinds = {f"{split}.{g}": c["mean"] for split, cells in groups.items() for g, c in cells.items() if "." not in g}
    return means["all"], kinds


@pytest.fixture(scope="session")
def lora_run(sft_base, curriculum, tmp_path_factory):
    """The tiny LoRA recipe over the SFT base, with identity and world-fact accuracy before and after."""
    model, tokenizer = load(sft_base)
    before = {
        "identity": evaluate_model(model, tokenizer, curriculum["lora_identity"]["eval"])["all"],
    }
    before["world"], before["world_by_kind"] = world_accuracy(model, tokenizer, curriculum)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    argv = ["--config", str(TINY / "lora.yaml"), "--model_name_or_path", str(sft_base), "--output_dir", str(out)]
    metrics = lora.main(*lora.make_parser().parse_args_and_config(argv + QUIET))
    adapted = load_lora_model(out)
    after = {
        "identity": evaluate_model(adapted, tokenizer, curriculum["lora_identity"]["eval"]),
    }
    after["world"], after["world_by_kind"] = world_accuracy(adapted, tokenizer, curriculum)
    return out, adapted, tokenizer, metrics, before, after


def test_lora_teaches_a_new_identity(lora_run, curriculum, tmp_path):
    out, adapted, tokenizer, metrics, before, after = lora_run
    merged = merge_lora.main(merge_lora.MergeArguments(adapter_path=str(out), output_dir=str(tmp_path / "merged")))
    merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
    records = load_eval_records(curriculum["sft"]["eval"])[:16]
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in records]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        merge_diff_fp32 = (merged_model(**batch).logits - adapted(**batch).logits)[real].abs().max().item()
        # In float64 the arithmetic's own rounding (~1e-6 at logits of 10 in float32) drops out and what is left is
        # the merge itself: W + scale * B @ A, stored in float32.
        merged_model.double(), adapted.double()
        merge_diff = (merged_model(**batch).logits - adapted(**batch).logits)[real].abs().max().item()
        adapted.float()

    report(
        "lora",
        identity_before=before["identity"],
        identity_after=after["identity"],
        world_before=before["world"],
        world_after=after["world"],
        world_by_kind_before=before["world_by_kind"],
        world_by_kind_after=after["world_by_kind"],
        trainable_params=metrics["trainable_params"],
        total_params=metrics["total_params"],
        merge_max_abs_logit_diff=merge_diff,
        merge_max_abs_logit_diff_fp32_arithmetic=merge_diff_fp32,
        train_runtime_s=metrics["train_runtime"],
    )
    # Measured on the quickstart base: 0% -> 83% (10 of 12 held-out identity prompts; 100% of names).
    assert before["identity"] == 0 and after["identity"]["all"] >= 0.75 and after["identity"]["name"] >= 0.9
    assert 0 < metrics["trainable_params"] < 0.1 * metrics["total_params"]
    assert merge_diff <= 1e-5


@pytest.mark.xfail(
    strict=True,
    reason="the tiny LoRA recipe forgets: on the quickstart base held-out world QA falls 45.9% -> 25.2% (pretrain-only "
    "facts 59.6% -> ~30%: answers swap in other names or the new identity's phrases); lower lr, 4x replay, 3 epochs, "
    "attention-only and MLP-only targets all measured 27-35%. Strict: passing means the recipe was fixed.",
)
def test_lora_keeps_world_facts(lora_run):
    *_, before, after = lora_run
    assert after["world"] >= before["world"] - 0.05 and after["identity"]["all"] >= 0.9


def pair_margins(model, tokenizer, records) -> list[float]:
    return [margin for _, margin in preference_margins(model, tokenizer, records)]


def greedy_keeps_chosen(model, tokenizer, records) -> float:
    """Fraction of known-entity pairs whose greedy answer is the chosen answer, word for word: the guard against a
    DPO run that raises log-probability preferences while its generations fall apart."""
    known = [r for r in records if r["split"] != "unknown_entity"]
    generate = make_generate_fn(model, tokenizer, batch_size=64, max_new_tokens=32)
    prompts = [{"prompt": r["chosen"][:-1], "task": "qa"} for r in known]
    return sum(c.strip() == r["chosen"][-1]["content"] for r, c in zip(known, generate(prompts))) / len(known)


def test_dpo_raises_preference_accuracy_and_margin(sft_base, curriculum, tmp_path):
    records = load_eval_records(curriculum["dpo"]["eval"])
    model, tokenizer = load(sft_base)
    accuracy_before = preference_accuracy(model, tokenizer, records)
    margins_before = pair_margins(model, tokenizer, records)
    kept_before = greedy_keeps_chosen(model, tokenizer, records)

    out = tmp_path / "dpo"
    metrics = dpo.main(
        *dpo.make_parser().parse_args_and_config(
            ["--config", str(TINY / "dpo.yaml"), "--model_name_or_path", str(sft_base), "--output_dir", str(out)]
            + QUIET,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    accuracy_after = preference_accuracy(model, tokenizer, records)
    margins_after = pair_margins(model, tokenizer, records)
    kept_after = greedy_keeps_chosen(model, tokenizer, records)
    margin_before, margin_after = (sum(m) / len(m) for m in (margins_before, margins_after))
    unknown = [i for i, r in enumerate(records) if r["split"] == "unknown_entity"]
    unknown_before, unknown_after = (
        sum(m[i] for i in unknown) / len(unknown) for m in (margins_before, margins_after)
    )
    grew = sum(after > before for after, before in zip(margins_after, margins_before)) / len(margins_before)
    report(
        "dpo",
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        margin_before=margin_before,
        margin_after=margin_after,
        unknown_entity_margin_before=unknown_before,
        unknown_entity_margin_after=unknown_after,
        pairs_with_larger_margin=grew,
        greedy_equals_chosen_before=kept_before,
        greedy_equals_chosen_after=kept_after,
        train_runtime_s=metrics["train_runtime"],
    )
    # SFT never saw a question about a name that exists nowhere, so it prefers the invented answer on nearly every
    # held-out unknown_entity pair (names DPO never trained on): that accuracy must rise, taking the total with it.
    # The known-entity pairs start near 100% and must hold (one pair of slack), and greedy answers must survive.
    assert accuracy_after["unknown_entity"] >= accuracy_before["unknown_entity"] + 0.05
    assert accuracy_after["all"] > accuracy_before["all"]
    for kind in ("wrong_fact", "evasive"):
        assert accuracy_after[kind] >= accuracy_before[kind] - 0.02, kind
    assert margin_after > margin_before and unknown_after > unknown_before
    assert grew > 0.5  # most pairs, not just the mean: measured 75-84%
    assert kept_after >= kept_before - 0.05


def heldout_kl_and_ce(student, teacher, path, tokenizer) -> tuple[float, float]:
    """Mean per-token KL(teacher || student) at temperature 1 and the student's cross-entropy, over the assistant
    tokens of held-out dialogues (both models read `tokenizer`, the teacher's)."""
    tokenizer = use_training_chat_template(tokenizer)
    kl_sum, ce_sum, count = 0.0, 0.0, 0
    for record in load_eval_records(path):
        messages = record["prompt"] + [{"role": "assistant", "content": record["conversations_answer"]}]
        encoded = tokenizer.apply_chat_template(
            messages, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
        )
        ids, mask = encoded["input_ids"], encoded["assistant_masks"][0, 1:].bool()
        with torch.no_grad():
            s = torch.log_softmax(student(input_ids=ids).logits[0, :-1].float(), -1)[mask]
            t = torch.log_softmax(teacher(input_ids=ids).logits[0, :-1, : s.shape[-1]].float(), -1)[mask]
        kl_sum += (t.exp() * (t - s)).sum().item()
        ce_sum += -s.gather(-1, ids[0, 1:][mask][:, None]).sum().item()
        count += int(mask.sum())
    return kl_sum / count, ce_sum / count


@pytest.fixture(scope="session")
def sft_eval_dialogues(curriculum, tmp_path_factory):
    """The held-out SFT questions with their reference answers, as records `heldout_kl_and_ce` reads."""
    path = tmp_path_factory.mktemp("kl") / "dialogues.jsonl"
    with open(curriculum["sft"]["eval"], encoding="utf-8") as source, open(path, "w", encoding="utf-8") as target:
        for line in source:
            record = json.loads(line)
            record["conversations_answer"] = record["conversations"][-1]["content"]
            target.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def test_distillation_pulls_the_student_towards_the_teacher(sft_base, sft_eval_dialogues, tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(sft_base).eval()
    parser = distill.make_parser()
    tokenizer = load_tokenizer(sft_base)
    argv = ["--config", str(TINY / "distill.yaml"), "--teacher_model_name_or_path", str(sft_base), *QUIET]
    # The student reads the teacher's tokenizer, whichever it is.
    argv += ["--tokenizer_name_or_path", str(sft_base)]
    # One initial student (the YAML's shape) for both runs, so they differ only in the objective.
    model_args = parser.parse_args_and_config(argv)[2]
    torch.manual_seed(0)
    fresh = MiniMindForCausalLM(MiniMindConfig.from_preset(model_args.preset, **model_args.config_overrides)).eval()
    fresh.save_pretrained(tmp_path / "init")
    argv += ["--preset", "", "--model_name_or_path", str(tmp_path / "init")]
    runs = {}
    for name, alpha in (("distilled", "0.5"), ("ce_only", "1.0")):
        runs[name] = distill.main(
            *parser.parse_args_and_config([*argv, "--alpha", alpha, "--output_dir", str(tmp_path / name)])
        )
    kl_before, ce_before = heldout_kl_and_ce(fresh, teacher, sft_eval_dialogues, tokenizer)
    results = {}
    for name in runs:
        student = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        results[name] = heldout_kl_and_ce(student, teacher, sft_eval_dialogues, tokenizer)
    teacher_ce = heldout_kl_and_ce(teacher, teacher, sft_eval_dialogues, tokenizer)[1]
    report(
        "distill",
        student_params=sum(p.numel() for p in fresh.parameters()),
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        kl_before=kl_before,
        ce_before=ce_before,
        kl_distilled=results["distilled"][0],
        ce_distilled=results["distilled"][1],
        kl_ce_only=results["ce_only"][0],
        ce_ce_only=results["ce_only"][1],
        teacher_ce=teacher_ce,
        train_runtime_s={name: m["train_runtime"] for name, m in runs.items()},
    )
    assert results["distilled"][0] < kl_before
    assert results["distilled"][0] < results["ce_only"][0]


WELL_FORMED = re.compile(r"<think>\n.*?</think>\n+<answer>\n[^\n<]+\n</answer>\s*", re.DOTALL)


def well_formed(text: str) -> bool:
    """Exactly one think block then one non-empty answer block, in that order, and nothing after."""
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    return all(text.count(tag) == 1 for tag in tags) and WELL_FORMED.fullmatch(text.strip() + "\n") is not None


def test_reasoning_traces_have_the_format_and_thinking_switches(sft_base, curriculum, tmp_path):
    out = tmp_path / "reason"
    metrics = reason.main(
        *reason.make_parser().parse_args_and_config(
            ["--config", str(TINY / "reason.yaml"), "--model_name_or_path", str(sft_base), "--output_dir", str(out)]
            + QUIET,
        )
    )
    model, tokenizer = load(out)
    records = load_eval_records(curriculum["reasoning"]["eval"])
    results = {}
    for mode, opened in (("thinking_on", "<think>\n"), ("thinking_off", EMPTY_THINK)):
        generate = make_generate_fn(
            model,
            tokenizer,
            max_new_tokens=64,
            batch_size=50,
            chat_template_kwargs={"enable_thinking": mode == "thinking_on"},
        )
        # The chat template wrote the opening of the think block; score the whole assistant text.
        texts = [opened + completion for completion in generate(records)]
        results[mode] = {
            "well_formed": sum(map(well_formed, texts)) / len(texts),
            "accuracy": sum(score(r, t) for r, t in zip(records, texts)) / len(texts),
            "example": texts[0],
            "texts": texts,
        }
    # The best constant answer (the most frequent one in the training traces) scores what a model that learned the
    # format but no arithmetic would: the tiny model's accuracy sits there (measured 5% / 4% against 3.5%), so it is
    # reported, not asserted; the stage's measurable job here is the format and the switch.
    traces = [json.loads(line)["conversations"][-1]["content"] for line in open(curriculum["reasoning"]["train"])]
    answers = Counter(m for t in traces for m in re.findall(r"<answer>\n(.*?)\n</answer>", t))
    constant = f"<think>\n\n</think>\n\n<answer>\n{answers.most_common(1)[0][0]}\n</answer>"
    baseline = sum(score(r, constant) for r in records) / len(records)
    report(
        "reason",
        **{m: {k: v for k, v in r.items() if k != "texts"} for m, r in results.items()},
        constant_answer_accuracy=baseline,
        train_runtime_s=metrics["train_runtime"],
    )
    assert results["thinking_on"]["well_formed"] >= 0.9
    assert results["thinking_off"]["well_formed"] >= 0.9
    # Thinking on writes steps inside the block; thinking off answers straight after the empty block.
    texts = results["thinking_on"]["texts"]
    assert sum(t.split("</think>")[0].strip() != "<think>" for t in texts) >= 0.9 * len(texts)
