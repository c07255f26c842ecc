"""The post-training recipes (LoRA + merge, DPO, logit distillation, reasoning distillation) on tiny in-process models:
every shipped YAML parses, each recipe trains a few steps and changes what it should (and nothing else), the losses
are the documented formulas, and bad input stops with one error before anything is written.

The effects on the embedded curriculum (identity, preferences, KL, think/answer format) are in
`test_post_training_effects.py` (marked slow)."""

import json
import re
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from minimind_hf.chat_templates import use_training_chat_template
from minimind_hf.converters import export_native, load_minimind
from minimind_hf.data import (
    EMPTY_THINK,
    DataValidationError,
    load_reasoning_dataset,
    load_sft_dataset,
    skip_thinking,
)
from minimind_hf.lora import add_replay, count_parameters, load_lora_model, lora_config
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.trainers import (
    LogitDistillationConfig,
    LogitDistillationTrainer,
    ReasoningSFTConfig,
    ReasoningSFTTrainer,
    reasoning_tag_weights,
)
from minimind_hf.training import ModelArguments, RecipeError
from recipes import distill, dpo, lora, merge_lora, reason, sft
from tests.objective import assert_labels_on_assistant_tokens, recording_batches
from tests.utils import (
    FAST,
    briefly_trained,
    parse_shipped_yaml,
    shipped_yamls,
    sigkill_after_checkpoint,
    tiny_model,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"lora": lora, "dpo": dpo, "distill": distill, "reason": reason}
STUDENT = json.dumps({"hidden_size": 64, "num_hidden_layers": 1, "head_dim": 32, "intermediate_size": 96})


def test_every_preset_has_every_post_training_yaml():
    presets = ["tiny", "minimind2-small", "minimind2", "minimind2-moe", "minimind3", "minimind3-moe"]
    missing = [f"{p}/{s}.yaml" for p in presets for s in RECIPES if not (ROOT / "recipes" / p / f"{s}.yaml").exists()]
    assert not missing


@pytest.mark.parametrize("path", shipped_yamls(RECIPES))
def test_every_shipped_yaml_parses_with_its_recipe(path):
    raw, args = parse_shipped_yaml(path, RECIPES[path.stem])
    training_args, model_args = args[1], args[2]
    assert training_args.output_dir == raw["output_dir"]
    assert training_args.lr_scheduler_type == "cosine_with_min_lr" and training_args.warmup_steps == 0
    assert training_args.activation_checkpointing is False
    assert raw["bf16"] is (path.parent.name != "tiny")
    if path.stem == "lora":
        assert model_args.use_peft and model_args.lora_r == 8 and "gate" not in model_args.lora_target_modules
        assert training_args.assistant_only_loss and model_args.model_name_or_path
    if path.stem == "dpo":
        assert training_args.beta == 0.1 and model_args.model_name_or_path
        if path.parent.name != "tiny":
            assert training_args.learning_rate == 4e-8 and training_args.max_length == 1024
    if path.stem == "distill":
        assert training_args.alpha == 0.5 and training_args.temperature == 1.5
        assert training_args.teacher_model_name_or_path and training_args.assistant_only_loss
    if path.stem == "reason":
        assert training_args.tag_weight == 10.0 and training_args.assistant_only_loss
        if path.parent.name != "tiny":
            assert training_args.learning_rate == 1e-6 and training_args.max_length == 720


def chat(user, assistant):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    questions = ["Who are you?", "What is your name?", "Who made you?", "你是谁？", "Introduce yourself.", "Hi!"]
    identity = [{"conversations": chat(q, "I am Tovi, made by Starfield Workshop.")} for q in questions * 4]
    names = ["Alice", "Bob", "Chen Wei", "Dana", "Emil", "Farah"]
    pairs = [
        {
            "chosen": chat(f"Where does {n} live?", f"{n} lives in Lumen."),
            "rejected": chat(f"Where does {n} live?", "I'm not sure about that." if i % 2 else f"{n} lives in Orin."),
        }
        for i, n in enumerate(names * 4)
    ]
    traces = [
        {
            "conversations": chat(
                f"What is {a} + {b} - 3?",
                f"<think>\nFirst, {a} + {b} = {a + b}.\nThen, {a + b} - 3 = {a + b - 3}.\n</think>\n"
                f"<answer>\n{a + b - 3}\n</answer>",
            )
        }
        for a in range(1, 5)
        for b in range(1, 7)
    ]
    return {
        "identity": write_jsonl(root / "identity.jsonl", identity),
        "dpo": write_jsonl(root / "dpo.jsonl", pairs),
        "reasoning": write_jsonl(root / "reasoning.jsonl", traces),
    }


def save_folder(model, path):
    model.save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A briefly trained tiny dense checkpoint folder (stands in for an SFT output)."""
    return save_folder(briefly_trained(tiny_model(seed=1), steps=10), tmp_path_factory.mktemp("base") / "sft")


@pytest.fixture(scope="module")
def moe_base(tmp_path_factory):
    return save_folder(
        briefly_trained(tiny_model("moe_shared", seed=2), steps=10), tmp_path_factory.mktemp("moe") / "sft"
    )


def run(stage, argv):
    return RECIPES[stage].main(*RECIPES[stage].make_parser().parse_args_and_config(argv))


def log_history(output_dir):
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def logged(output_dir, key):
    return [e[key] for e in log_history(output_dir) if key in e]


def state_dict(folder):
    return load_file(Path(folder) / "model.safetensors")


# LoRA


def lora_argv(data, base, out, *extra):
    return [
        "--config", str(ROOT / "recipes/tiny/lora.yaml"),
        "--model_name_or_path", str(base),
        "--dataset_files", str(data["identity"]),
        "--output_dir", str(out),
        "--max_steps", "8",
        "--learning_rate", "1e-2",
        *FAST,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(data, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "adapter"
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = recording_batches(monkeypatch, lora.SFTTrainer)
        metrics = run("lora", lora_argv(data, base, out))
    metrics["batches"] = seen
    return out, metrics


def test_lora_trains_only_the_adapter_and_reports_its_size(lora_run, base):
    out, metrics = lora_run
    losses = logged(out, "loss")
    assert losses[-1] < losses[0], losses
    assert len(metrics["batches"]) == 8
    assert_labels_on_assistant_tokens(metrics["batches"])
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(base)
    # rank 8 on q, k, v, o (64->128, 64->64, 64->64, 128->64) and gate, up, down (64->128, 64->128, 128->64), 2 layers
    per_layer = 8 * ((64 + 128) + (64 + 64) * 2 + (128 + 64)) + 8 * ((64 + 128) * 2 + (128 + 64))
    assert metrics["trainable_params"] == 2 * per_layer
    assert metrics["total_params"] == count_parameters(tiny_model())[1] + metrics["trainable_params"]
    assert json.loads((out / "train_results.json").read_text())["trainable_params"] == metrics["trainable_params"]
    adapter = load_file(out / "adapter_model.safetensors")
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    # the base folder is untouched and the adapter model's base weights are still the base's
    model = load_lora_model(out)
    merged_free = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()
    }
    for name, tensor in state_dict(base).items():
        assert torch.equal(merged_free[name], tensor), name


def test_merged_folder_matches_the_adapter_and_loads_everywhere(lora_run, tmp_path):
    adapter, _ = lora_run
    merged = tmp_path / "merged"
    merge_lora.main(
        *merge_lora.make_parser().parse_args_and_config(["--adapter_path", str(adapter), "--output_dir", str(merged)])
    )
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_minimind.py",
        "configuration_minimind.py",
        "tokenizer.json",
    ):
        assert (merged / name).is_file(), name
    assert not list(merged.glob("adapter_*"))
    assert "AutoModelForCausalLM" in json.loads((merged / "config.json").read_text())["auto_map"]
    ids = torch.randint(3, 6400, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_lora_model(adapter)(input_ids=ids).logits
        registered = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
        remote = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=True).eval()(input_ids=ids).logits
    assert (registered - expected).abs().max() <= 1e-5
    assert (remote - expected).abs().max() <= 1e-5
    config, weights = load_minimind(merged)
    assert not any("lora" in k for k in weights) and config.hidden_size == 64
    assert (export_native(merged, tmp_path / "llama") / "model.safetensors").is_file()
    with pytest.raises(RecipeError, match="already exists"):
        merge_lora.main(merge_lora.MergeArguments(adapter_path=str(adapter), output_dir=str(merged)))


@pytest.mark.parametrize(
    "overrides, message",
    [({"hidden_size": 96}, r"in_features 64, base 96"), ({"num_hidden_layers": 1}, r"layers\.1\..*missing")],
)
def test_merge_refuses_an_adapter_that_does_not_fit_the_base(lora_run, tmp_path, overrides, message):
    adapter, _ = lora_run
    other = save_folder(tiny_model(**overrides), tmp_path / "other")
    out = tmp_path / "merged"
    with pytest.raises(RecipeError, match=message):
        merge_lora.main(
            merge_lora.MergeArguments(
                adapter_path=str(adapter), output_dir=str(out), base_model_name_or_path=str(other)
            )
        )
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_lora_adapts_every_expert_and_never_the_router(moe_base):
    model = AutoModelForCausalLM.from_pretrained(moe_base)
    peft_model = get_peft_model(model, lora_config(ModelArguments(use_peft=True), model))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    layer = "base_model.model.model.layers.0."
    for name in ("self_attn.q_proj", "mlp.experts.3.down_proj", "mlp.shared_experts.0.gate_proj"):
        assert layer + name in adapted, name
    assert not any(n.endswith("mlp.gate") for n in adapted)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "mlp.gate." in n)
    for targets in (["gate"], ["q_proj", "mlp.gate"]):
        with pytest.raises(RecipeError, match=r"router.*layers\.0\.mlp\.gate"):
            lora_config(ModelArguments(use_peft=True, lora_target_modules=targets), model)


def test_lora_trains_on_moe(moe_base, data, tmp_path):
    out = tmp_path / "moe"
    metrics = run("lora", lora_argv(data, moe_base, out, "--max_steps", "3"))
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("experts.2.up_proj.lora_B" in k for k in adapter) and not any("mlp.gate.lora" in k for k in adapter)
    assert 0 < metrics["trainable_params"] < metrics["total_params"]


def test_replay_mixes_general_dialogues_without_the_old_identity(data, tmp_path):
    identity = load_sft_dataset([data["identity"]])
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [{"conversations": chat(f"What is {i} + 1?", f"{i} + 1 = {i + 1}.")} for i in range(30)]
        + [{"conversations": chat("Who are you?", "I am MiniMind.")}] * 30,
    )
    mixed = add_replay(identity, load_sft_dataset([general]), samples=20, exclude=["MiniMind"], seed=1)
    replayed = [r["messages"][-1]["content"] for r in mixed][len(identity) :]
    assert len(replayed) == 20 and len(set(replayed)) == 20 and not any("MiniMind" in c for c in replayed)
    again = add_replay(identity, load_sft_dataset([general]), samples=20, exclude=["MiniMind"], seed=1)
    assert [r["messages"][-1]["content"] for r in again][len(identity) :] == replayed
    assert add_replay(identity, load_sft_dataset([general]), samples=0) is identity


# DPO


class RecordingDPOTrainer(dpo.DPOTrainer):
    instances = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instances.append(self)


@pytest.fixture
def recording_dpo(monkeypatch):
    RecordingDPOTrainer.instances = []
    monkeypatch.setattr(dpo, "DPOTrainer", RecordingDPOTrainer)
    return RecordingDPOTrainer.instances


def dpo_argv(data, out, *extra):
    return [
        "--config", str(ROOT / "recipes/tiny/dpo.yaml"),
        "--dataset_files", str(data["dpo"]),
        "--output_dir", str(out),
        "--max_steps", "4",
        "--learning_rate", "5e-3",
        *FAST,
        *extra,
    ]  # fmt: skip


def first_step_rewards(out):
    first = [e for e in log_history(out) if "loss" in e][0]
    return first["rewards/chosen"], first["rewards/rejected"], first["loss"]


def test_dpo_from_a_folder_uses_a_frozen_copy_as_reference(data, base, tmp_path, recording_dpo):
    out = tmp_path / "dpo"
    run("dpo", dpo_argv(data, out, "--model_name_or_path", str(base)))
    (trainer,) = recording_dpo
    before = state_dict(base)
    ref = {k: v for k, v in trainer.ref_model.state_dict().items() if k in before}
    assert ref.keys() == before.keys() and all(torch.equal(ref[k], before[k]) for k in before)
    after = state_dict(out)
    assert not torch.equal(
        after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"]
    )
    # at the first step the policy is the reference: zero implicit rewards, loss log(2)
    chosen, rejected, loss = first_step_rewards(out)
    assert chosen == 0 and rejected == 0 and loss == pytest.approx(0.6931, abs=1e-4)
    assert logged(out, "rewards/margins")[-1] > 0


def test_a_sigkilled_dpo_run_resumes_to_the_uninterrupted_result(data, base, tmp_path):
    """SIGKILL a DPO process at a random moment after its step-4 checkpoint and resume: the policy ends where an
    uninterrupted run's does and logs the same losses and rewards (the frozen reference is rebuilt from the start
    folder, not from the checkpoint)."""
    steps = ["--max_steps", "40", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    argv = lambda out: [*dpo_argv(data, out, "--model_name_or_path", str(base)), *steps]  # noqa: E731
    run("dpo", argv(straight))
    done = sigkill_after_checkpoint("recipes/dpo.py", argv(killed), killed)
    assert 4 <= max(done) < 40, done
    run("dpo", [*argv(killed), "--resume_from_checkpoint", "true"])
    resumed, uninterrupted = state_dict(killed), state_dict(straight)
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-6, atol=1e-7, msg=name)
    for key in ("loss", "rewards/margins"):
        assert logged(killed, key)[-10:] == pytest.approx(logged(straight, key)[-10:], rel=1e-5), key


def test_dpo_from_a_fresh_model_needs_no_reference_folder(data, tmp_path, recording_dpo):
    out = tmp_path / "fresh"
    small = STUDENT
    argv = dpo_argv(
        data, out, "--model_name_or_path", "", "--preset", "tiny", "--config_overrides", small, "--max_steps", "2"
    )
    run("dpo", argv)
    assert recording_dpo[0].ref_model is not None and first_step_rewards(out)[:2] == (0, 0)


def test_dpo_under_peft_scores_the_reference_with_the_adapter_disabled(data, base, tmp_path, recording_dpo):
    out = tmp_path / "dpo-lora"
    run("dpo", dpo_argv(data, out, "--model_name_or_path", str(base), "--use_peft", "true", "--learning_rate", "2e-2"))
    (trainer,) = recording_dpo
    assert trainer.ref_model is None
    assert (out / "adapter_model.safetensors").is_file()
    assert first_step_rewards(out)[:2] == (0, 0)
    assert logged(out, "rewards/margins")[-1] > 0
    # the base weights under the adapter are the SFT checkpoint's, so disabling it gives back the reference
    model = load_lora_model(out, base)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.randint(3, 6400, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), model.disable_adapter():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-6)


def test_dpo_adds_the_moe_aux_loss(data, moe_base, tmp_path):
    out = tmp_path / "moe"
    run("dpo", dpo_argv(data, out, "--model_name_or_path", str(moe_base), "--max_steps", "2"))
    assert logged(out, "aux_loss") and all(a > 0 for a in logged(out, "aux_loss"))


def test_dpo_pairs_with_different_prompts_stop_before_writing(data, base, tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"chosen": chat("Where does Bob live?", "In Lumen."), "rejected": chat("Where does Bob live?", "Orin.")},
            {"chosen": chat("Where does Bob live?", "In Lumen."), "rejected": chat("Where is Bob?", "Orin.")},
        ],
    )
    out = tmp_path / "never"
    with pytest.raises(DataValidationError, match=r"bad\.jsonl:2: rejected: chosen and rejected must share"):
        run("dpo", dpo_argv({"dpo": bad}, out, "--model_name_or_path", str(base)))
    assert not out.exists()


# Logit distillation


def distill_argv(teacher, out, *extra):
    return [
        "--config", str(ROOT / "recipes/tiny/distill.yaml"),
        "--config_overrides", STUDENT,
        "--teacher_model_name_or_path", str(teacher),
        "--dataset_files", str(ROOT / "tests/fixtures/upstream/sft.jsonl"),
        "--output_dir", str(out),
        "--max_steps", "6",
        "--learning_rate", "1e-2",
        *FAST,
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("teacher", ["base", "moe_base"])
def test_distill_trains_a_smaller_student_from_a_dense_or_moe_teacher(teacher, request, tmp_path):
    teacher_dir = request.getfixturevalue(teacher)
    out = tmp_path / "student"
    # alpha 0: the loss is T^2 * KL alone (these teachers are barely trained, so CE would pull the student elsewhere)
    run("distill", distill_argv(teacher_dir, out, "--alpha", "0.0"))
    losses, kl = logged(out, "loss"), logged(out, "kl")
    assert kl[-1] < kl[0] and losses == pytest.approx([1.5**2 * k for k in kl], rel=1e-4), (losses, kl)
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 1
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(teacher_dir).parameters()
    )


def distill_trainer(student, teacher, alpha, temperature, tmp_path):
    tokenizer = use_training_chat_template(load_tokenizer())
    args = LogitDistillationConfig(
        output_dir=str(tmp_path / "unused"),
        alpha=alpha,
        temperature=temperature,
        assistant_only_loss=True,
        max_length=128,
        report_to="none",
        bf16=False,
        activation_checkpointing=False,
    )
    dataset = distill.load_sft_dataset([ROOT / "tests/fixtures/upstream/sft.jsonl"])
    return LogitDistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tokenizer
    )


def test_distillation_loss_is_alpha_ce_plus_t2_kl_on_assistant_tokens_with_sliced_teacher(tmp_path):
    student = tiny_model(seed=3)
    # a teacher whose output is padded to 6464 rows: the extra logits must be ignored, so make them huge
    teacher = briefly_trained(tiny_model(seed=4, vocab_size=6464, hidden_size=96, num_hidden_layers=3), steps=5)
    with torch.no_grad():
        teacher.lm_head.weight[6400:] = 50.0
    trainer = distill_trainer(student, teacher, alpha=0.3, temperature=2.0, tmp_path=tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :6400]
    mask = batch["labels"][:, 1:] != -100
    s, t, y = s[mask], t[mask], batch["labels"][:, 1:][mask]
    ce = torch.nn.functional.cross_entropy(s, y)
    p_t = torch.softmax(t / 2.0, -1)
    kl = (p_t * (torch.log_softmax(t / 2.0, -1) - torch.log_softmax(s / 2.0, -1))).sum(-1).mean()
    assert loss.item() == pytest.approx((0.3 * ce + 0.7 * 4.0 * kl).item(), rel=1e-5)
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(kl.item(), rel=1e-5)


def test_teacher_with_another_vocabulary_stops_before_writing(base, tmp_path):
    narrow = save_folder(tiny_model(vocab_size=4000), tmp_path / "narrow")
    other_tokens = tmp_path / "other-tokenizer"
    tiny_model(vocab_size=6464).save_pretrained(other_tokens)
    tokenizer = load_tokenizer()
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(other_tokens)
    for teacher, message in (
        (narrow, r"teacher predicts 4000 tokens but the student 6400"),
        (other_tokens, r"tokenizer differs.*id 6400 is '<extra_token>'"),
        (tmp_path / "nowhere", r"not a model folder"),
    ):
        out = tmp_path / "never"
        with pytest.raises(RecipeError, match=message):
            run("distill", distill_argv(teacher, out))
        assert not out.exists()


# Reasoning distillation


def reasoning_trainer(model, tag_weight, data, tmp_path):
    tokenizer = use_training_chat_template(load_tokenizer())
    args = ReasoningSFTConfig(
        output_dir=str(tmp_path / "unused"),
        tag_weight=tag_weight,
        assistant_only_loss=True,
        max_length=128,
        report_to="none",
        bf16=False,
        activation_checkpointing=False,
    )
    dataset = load_reasoning_dataset([data["reasoning"]])
    return ReasoningSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def tag_weights_by_offsets(row: list[int], tokenizer, weight: float = 10.0) -> list[float]:
    """The expected weights, found without `reasoning_tag_weights`: the characters of every `<think>`, `</think>`,
    `<answer>`, `</answer>` in the last assistant turn's text, mapped back to tokens through the tokenizer's offsets."""
    text = tokenizer.decode(row)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == row
    turn = text.rindex("<|im_start|>assistant\n")
    tags = [m.span() for m in re.finditer(r"</?(?:think|answer)>", text) if m.start() >= turn]
    return [
        weight if any(a <= start and end <= b for a, b in tags) and end > start else 1.0
        for start, end in encoded["offset_mapping"]
    ]


def test_reasoning_loss_weights_exactly_the_tag_tokens(data, tmp_path):
    model = tiny_model(seed=5)
    trainer = reasoning_trainer(model, 10.0, data, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    tokenizer = trainer.processing_class
    weights = torch.tensor([tag_weights_by_offsets(row, tokenizer) for row in batch["input_ids"].tolist()])[:, 1:]
    mask = labels != -100
    expected = (nll * weights * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the weighted tokens are exactly those spelling the four tags, inside the assistant span
    row = batch["input_ids"][0].tolist()
    heavy = [i for i, w in enumerate(reasoning_tag_weights(row, tokenizer)) if w == 10.0]
    assert tokenizer.decode([row[i] for i in heavy]) == "<think></think><answer></answer>"
    assert all(batch["labels"][0, i] != -100 for i in heavy)
    plain = reasoning_trainer(model, 1.0, data, tmp_path).compute_loss(model, dict(batch))
    assert plain.item() == pytest.approx((nll * mask).sum().item() / mask.sum().item(), rel=1e-5)
    assert loss.item() > plain.item()


def test_reason_recipe_trains_and_loss_falls(data, base, tmp_path, monkeypatch):
    """Loss falls, and every batch is labelled on the assistant's think/answer tokens only (the tag weights are
    checked exactly by `test_reasoning_loss_weights_exactly_the_tag_tokens`)."""
    seen = recording_batches(monkeypatch, reason.ReasoningSFTTrainer)
    out = tmp_path / "reason"
    argv = [
        "--config", str(ROOT / "recipes/tiny/reason.yaml"),
        "--model_name_or_path", str(base),
        "--dataset_files", str(data["reasoning"]),
        "--output_dir", str(out),
        "--max_steps", "8",
        "--learning_rate", "5e-3",
        *FAST,
    ]  # fmt: skip
    run("reason", argv)
    losses = logged(out, "loss")
    assert losses[-1] < losses[0], losses
    assert len(seen) == 8
    assert_labels_on_assistant_tokens(seen)
    assert "{% generation %}" not in (out / "chat_template.jinja").read_text()


def test_skip_thinking_matches_the_template_with_thinking_off(data):
    dataset = load_reasoning_dataset([data["reasoning"]])
    once, again = skip_thinking(dataset, p=0.5, seed=3), skip_thinking(dataset, p=0.5, seed=3)
    contents = [r["messages"][-1]["content"] for r in once]
    assert contents == [r["messages"][-1]["content"] for r in again]
    skipped = [c for c in contents if c.startswith(EMPTY_THINK)]
    assert 0 < len(skipped) < len(contents)
    assert skipped[0] == EMPTY_THINK + "<answer>\n" + skipped[0].split("<answer>\n")[1]
    tokenizer = load_tokenizer()
    row = next(r for r in once if r["messages"][-1]["content"].startswith(EMPTY_THINK))
    messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False).startswith(prompt)
    thinking = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, enable_thinking=True, tokenize=False
    )
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")


def test_reasoning_data_without_think_blocks_stops_before_writing(base, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": chat("What is 2 + 2?", "4")}])
    out = tmp_path / "never"
    with pytest.raises(DataValidationError, match=r"bad\.jsonl:1: conversations\[1\]\.content"):
        run("reason", ["--config", str(ROOT / "recipes/tiny/reason.yaml"), "--model_name_or_path", str(base),
                       "--dataset_files", str(bad), "--output_dir", str(out)])  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("stage", ["sft", "distill", "reason"])
def test_sft_family_losses_carry_the_moe_balance_loss(stage, data, base, moe_base, tmp_path):
    """SFT, logit distillation into an MoE student and reasoning SFT on an MoE model all add the router's balance
    loss (TRL's SFT-family trainers bypass the model's own loss, so each trainer must add it)."""
    out = tmp_path / stage
    common = ["--output_dir", str(out), "--max_steps", "2", *FAST]
    if stage == "sft":
        argv = ["--config", str(ROOT / "recipes/tiny/sft.yaml"), "--model_name_or_path", str(moe_base)]
        argv += ["--dataset_files", str(ROOT / "tests/fixtures/upstream/sft.jsonl"), *common]
        sft.main(*sft.make_parser().parse_args_and_config(argv))
    elif stage == "distill":
        student = STUDENT
        argv = distill_argv(base, out, "--preset", "tiny-moe", "--config_overrides", student, "--max_steps", "2")
        run("distill", argv)
    else:
        argv = ["--config", str(ROOT / "recipes/tiny/reason.yaml"), "--model_name_or_path", str(moe_base)]
        run("reason", [*argv, "--dataset_files", str(data["reasoning"]), *common])
    aux = logged(out, "aux_loss")
    assert len(aux) == 2 and all(a > 0 for a in aux), aux


@pytest.mark.parametrize("stage", ["sft", "distill", "reason"])
def test_use_peft_trains_an_adapter_in_every_sft_family_stage(stage, data, base, tmp_path):
    """`--use_peft true` (TRL's `ModelConfig` flag) turns any training stage into LoRA training: only an adapter is
    saved, and the base checkpoint's weights under it are unchanged."""
    out = tmp_path / stage
    lora_flags = ["--use_peft", "true", "--lora_r", "4", "--max_steps", "2", "--learning_rate", "1e-2"]
    if stage == "distill":
        argv = distill_argv(base, out, "--preset", "", "--model_name_or_path", str(base), *lora_flags)
    else:
        files = {"sft": ROOT / "tests/fixtures/upstream/sft.jsonl", "reason": data["reasoning"]}[stage]
        argv = ["--config", str(ROOT / f"recipes/tiny/{stage}.yaml"), "--model_name_or_path", str(base)]
        argv += ["--dataset_files", str(files), "--output_dir", str(out), *FAST, *lora_flags]
    recipe = {"sft": sft, "distill": distill, "reason": reason}[stage]
    recipe.main(*recipe.make_parser().parse_args_and_config(argv))
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    adapted = load_lora_model(out, base)
    assert any(t.abs().sum() > 0 for k, t in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k)
    with adapted.disable_adapter():
        merged_free = {
            k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in adapted.state_dict().items()
        }
        for name, tensor in state_dict(base).items():
            assert torch.equal(merged_free[name], tensor), name


def test_lora_recipe_refuses_use_peft_false(data, base, tmp_path):
    with pytest.raises(RecipeError, match="use_peft: the LoRA recipe trains an adapter"):
        run("lora", lora_argv(data, base, tmp_path / "never", "--use_peft", "false"))
