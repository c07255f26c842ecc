"""The pretrain and SFT recipes: every shipped YAML parses, each recipe trains a few steps with falling loss, bad
input stops before anything is written, runs resume, MoE aux loss is logged, packing isolates documents."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from minimind_hf import training
from minimind_hf.packing import PackedCollator, tokenize_and_pack
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import STAGING, ModelArguments, RecipeError, build_model, checkpoint_problem
from recipes import pretrain, sft
from tests.objective import (
    assert_labels_on_assistant_tokens,
    assistant_token_mask,
    next_token_ce,
    recording_batches,
    unigram_entropy,
)
from tests.utils import (
    FAST,
    SMALL,
    parse_shipped_yaml,
    shipped_yamls,
    sigkill_after_checkpoint,
    tiny_model,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"pretrain": pretrain, "sft": sft}


@pytest.mark.parametrize("path", shipped_yamls(RECIPES))
def test_every_shipped_yaml_parses_with_its_recipe(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, RECIPES[path.stem])
    assert training_args.output_dir == raw["output_dir"]
    assert training_args.lr_scheduler_type == "cosine_with_min_lr" and training_args.warmup_steps == 0
    assert bool(model_args.preset) != bool(model_args.model_name_or_path) or path.stem == "pretrain"
    if path.stem == "sft":
        assert training_args.assistant_only_loss


def test_unknown_yaml_key_names_the_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("preset: tiny\noutput_dir: x\nlearning_rat: 1.0e-3\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml.*learning_rat"):
        pretrain.make_parser().parse_args_and_config(["--config", str(config)])


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("native", [True, False], ids=["bf16_cpu", "avx2_cpu"])
def test_bf16_on_a_cpu_only_machine(tmp_path, monkeypatch, caplog, native):
    """transformers refuses `bf16` without an accelerator unless `use_cpu` is set; the parser sets it where the CPU
    has bf16 instructions or the command line asks for bf16. A YAML's or the default's bf16 on a CPU without them
    (emulated autocast, many times slower) trains in fp32 and says so."""
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    config = tmp_path / "bf16.yaml"
    config.write_text("preset: tiny\noutput_dir: x\nbf16: true\n")

    def parse(*argv):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="minimind_hf.training"):
            return pretrain.make_parser().parse_args_and_config(list(argv))[1]

    # the YAML's bf16, and TRL's default (bf16 unless fp16) as the GPU presets' YAMLs have it
    for argv in (["--config", str(config)], ["--preset", "tiny", "--output_dir", "x"]):
        training_args = parse(*argv)
        assert training_args.bf16 is native and training_args.use_cpu is native
        assert ("training in fp32" in caplog.text) is not native
    # asked for on the command line: bf16 autocast on any CPU
    for argv in (
        ["--preset", "tiny", "--output_dir", "x", "--bf16", "true"],
        ["--config", str(config), "--bf16=true"],
    ):
        training_args = parse(*argv)
        assert training_args.bf16 and training_args.use_cpu and "fp32" not in caplog.text
    # bf16 switched off on the command line: use_cpu stays as it was
    training_args = parse("--config", str(config), "--bf16", "false")
    assert not training_args.bf16 and not training_args.use_cpu


def test_cpu_has_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(training.torch.cpu, "get_capabilities", lambda: {"avx2": True}, raising=False)
    real_path = training.Path
    monkeypatch.setattr(training, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    for line, native in [
        ("flags\t\t: fpu avx avx2 fma", False),
        ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile", True),
        ("Features\t: fp asimd bf16 i8mm", True),
        ("Features\t: fp asimd", False),
    ]:
        cpuinfo.write_text(f"processor\t: 0\n{line}\n")
        assert training.cpu_has_native_bf16() is native, line
    cpuinfo.unlink()  # no /proc (macOS): the capabilities torch reports decide
    assert training.cpu_has_native_bf16() is False
    monkeypatch.setattr(training.torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    assert training.cpu_has_native_bf16() is True


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    names = ["Alice", "Bob", "Chen Wei", "Dana", "Emil", "Farah", "Gao Lin", "Hana"]
    cities = ["Lumen", "Varo", "Kestrel", "Orin"]
    text = [
        {"text": f"{n} lives in {cities[i % 4]}. {n} works as a baker in {cities[i % 4]}. {n}住在{cities[i % 4]}。"}
        for i, n in enumerate(names * 4)
    ]
    sft_records = [
        {
            "conversations": [
                {"role": "user", "content": f"Where does {n} live?"},
                {"role": "assistant", "content": cities[i % 4]},
                {"role": "user", "content": f"And what is {n}'s job?"},
                {"role": "assistant", "content": "A baker."},
            ]
        }
        for i, n in enumerate(names * 4)
    ]
    return {
        "pretrain": write_jsonl(root / "pretrain.jsonl", text),
        "sft": write_jsonl(root / "sft.jsonl", sft_records),
    }


def run(stage, argv):
    return RECIPES[stage].main(*RECIPES[stage].make_parser().parse_args_and_config(argv))


def log_history(output_dir):
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def logged_losses(output_dir):
    return [e["loss"] for e in log_history(output_dir) if "loss" in e]


def pretrain_argv(small_data, out, *extra):
    return [
        "--config", str(ROOT / "recipes/tiny/pretrain.yaml"),
        "--dataset_files", str(small_data["pretrain"]),
        "--config_overrides", SMALL,
        "--output_dir", str(out),
        "--max_steps", "8",
        "--learning_rate", "5e-3",
        "--max_length", "64",
        *FAST,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    # 48 steps: enough to beat the unigram floor by a wide margin (measured: 2.34 nats against 3.75; 8 steps: 6.77)
    metrics = run("pretrain", pretrain_argv(small_data, out, "--max_steps", "48"))
    return out, metrics


def test_pretrain_trains_and_loss_falls(pretrained, small_data):
    """The loss falls, and the saved model predicts the documents' next tokens better than their own unigram
    frequencies can (scored here, not by the recipe): it learned from the context, which a wrong shift, a wrong
    mask or documents packed into each other's attention would not give."""
    out, metrics = pretrained
    steps = logged_losses(out)
    assert len(steps) == 48 and steps[-1] < steps[0] - 1.0, steps
    tokenizer = load_tokenizer(out)
    texts = [json.loads(line)["text"] for line in open(small_data["pretrain"], encoding="utf-8")]
    rows = [
        tokenizer(tokenizer.bos_token + t + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for t in texts
    ]
    everything = [[True] * len(row) for row in rows]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ce, floor = next_token_ce(model, rows, everything), unigram_entropy(rows, everything)
    assert ce < floor - 0.5, (ce, floor)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss_curve.png", "modeling_minimind.py"):
        assert (out / name).exists(), name
    assert metrics["train_loss"] > 0


def test_pretrained_parameters_changed(pretrained):
    out, _ = pretrained
    from transformers import AutoModelForCausalLM

    from minimind_hf import MiniMindConfig, MiniMindForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(42)
    fresh = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", **json.loads(SMALL)))
    assert trained.config.hidden_size == 64
    changed = [n for n, p in trained.named_parameters() if not torch.allclose(p, dict(fresh.named_parameters())[n])]
    assert len(changed) == len(list(trained.parameters()))


def test_sft_trains_on_assistant_tokens_and_loss_falls(pretrained, small_data, tmp_path, monkeypatch):
    """The recipe's batches carry labels exactly on the assistant tokens (checked on every batch it trains on), and
    the saved model predicts those answers better than their own token frequencies can (scored here)."""
    seen = recording_batches(monkeypatch, sft.SFTTrainer)
    pretrain_dir, _ = pretrained
    out = tmp_path / "sft"
    argv = [
        "--config", str(ROOT / "recipes/tiny/sft.yaml"),
        "--model_name_or_path", str(pretrain_dir),
        "--dataset_files", str(small_data["sft"]),
        "--output_dir", str(out),
        "--max_steps", "32",
        "--learning_rate", "5e-3",
        *FAST,
    ]  # fmt: skip
    run("sft", argv)
    steps = logged_losses(out)
    assert steps[-1] < steps[0], steps
    assert len(seen) == 32
    tokenizer = load_tokenizer()
    rows = [row for ids, _ in seen for row in ids]
    answers = [assistant_token_mask(row, tokenizer) for row in rows]
    ce_before = next_token_ce(AutoModelForCausalLM.from_pretrained(pretrain_dir).eval(), rows, answers)
    ce_after = next_token_ce(AutoModelForCausalLM.from_pretrained(out).eval(), rows, answers)
    # Measured: 6.29 nats before, 1.14 after 32 steps, unigram floor of the answers 2.44 (after 8 steps: 4.02).
    assert ce_after < unigram_entropy(rows, answers) - 0.5 < ce_before, (ce_before, ce_after)
    assert_labels_on_assistant_tokens(seen)
    # The saved tokenizer carries the inference template, not the training variant with generation markers.
    assert "{% generation %}" not in (out / "chat_template.jinja").read_text()


def test_sft_replays_pretraining_documents_with_loss_on_every_token(pretrained, small_data, tmp_path, monkeypatch):
    """With `replay_docs`, one epoch trains every dialogue once with labels on its assistant tokens only, and that
    many pretraining documents, as pretraining writes them (`bos + text + eos`), with labels on every
    token."""
    seen = recording_batches(monkeypatch, sft.SFTTrainer)
    argv = [
        "--config", str(ROOT / "recipes/tiny/sft.yaml"),
        "--model_name_or_path", str(pretrained[0]),
        "--dataset_files", str(small_data["sft"]),
        "--replay_docs", "8",
        "--replay_files", str(small_data["pretrain"]),
        "--output_dir", str(tmp_path / "sft"),
        "--num_train_epochs", "1",
        *FAST,
    ]  # fmt: skip
    run("sft", argv)
    tokenizer = load_tokenizer()
    texts = {json.loads(line)["text"] for line in open(small_data["pretrain"], encoding="utf-8")}
    replayed, dialogues = [], []
    for ids, labels in seen:
        for row, row_labels in zip(ids, labels):
            kept = [token for token, label in zip(row, row_labels) if label != -100]
            if kept == row[: len(kept)] and all(label == -100 for label in row_labels[len(kept) :]):
                replayed.append(tokenizer.decode(kept))
            else:
                dialogues.append((row, row_labels))
    assert len(seen) == 10 and len(dialogues) == 32 and len(replayed) == 8
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert all(doc.startswith(bos) and doc.endswith(eos) and doc[len(bos) : -len(eos)] in texts for doc in replayed)
    assert_labels_on_assistant_tokens([([row], [row_labels]) for row, row_labels in dialogues])


def test_sft_replay_errors_name_the_problem_before_training(pretrained, small_data, tmp_path):
    base = [
        "--config", str(ROOT / "recipes/tiny/sft.yaml"),
        "--model_name_or_path", str(pretrained[0]),
        "--dataset_files", str(small_data["sft"]),
        "--replay_files", str(small_data["pretrain"]),
        "--output_dir", str(tmp_path / "sft"),
        *FAST,
    ]  # fmt: skip
    with pytest.raises(RecipeError, match=r"replay_docs=33.*pretrain\.jsonl hold 32"):
        run("sft", [*base, "--replay_docs", "33"])
    with pytest.raises(RecipeError, match="packing: false"):
        run("sft", [*base, "--replay_docs", "8", "--packing", "true"])
    assert not (tmp_path / "sft").exists()


def test_sft_replay_defaults_to_the_curriculum_prose_only_for_curriculum_dialogues(small_data, caplog):
    tokenizer = load_tokenizer()
    own = sft.SFTDataArguments(dataset_files=[str(small_data["sft"])], replay_docs=8)
    assert own.replay_dataset(tokenizer, 64) is None  # another corpus's pretraining text is not ours to guess
    assert "nothing is replayed" in caplog.text
    replay = sft.SFTDataArguments(replay_docs=8).replay_dataset(tokenizer, 64)
    assert len(replay) == 8
    assert all(row["input_ids"] == row["labels"] and row["input_ids"][0] == tokenizer.bos_token_id for row in replay)
    assert sum(row["input_ids"][-1] == tokenizer.eos_token_id for row in replay) >= 1  # the rest cut at 64 tokens
    assert all(len(row["input_ids"]) <= 64 for row in replay)


def test_moe_aux_loss_is_logged(small_data, tmp_path):
    out = tmp_path / "moe"
    argv = pretrain_argv(small_data, out, "--preset", "tiny-moe", "--max_steps", "3")
    run("pretrain", argv)
    steps = [e for e in log_history(out) if "loss" in e]
    assert steps and all(e["aux_loss"] > 0 for e in steps)


def test_resume_continues_from_the_last_checkpoint(small_data, tmp_path):
    out = tmp_path / "resume"
    base = pretrain_argv(small_data, out, "--save_strategy", "steps", "--save_steps", "2")
    run("pretrain", [*base, "--max_steps", "4"])
    assert (out / "checkpoint-4").is_dir()
    with pytest.raises(RecipeError, match="checkpoint-4"):
        run("pretrain", [*base, "--max_steps", "6"])
    run("pretrain", [*base, "--max_steps", "6", "--resume_from_checkpoint", "true"])
    assert [e["step"] for e in log_history(out) if "loss" in e][-2:] == [5, 6]


def test_resume_after_an_interruption_is_exact(small_data, tmp_path):
    """A run cut off after its step-4 checkpoint and resumed ends where the uninterrupted run does: same losses,
    same weights (optimizer, scheduler, data order and RNG state all come back)."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    argv = [*pretrain_argv(small_data, straight, "--save_strategy", "steps", "--save_steps", "2"), "--max_steps", "6"]
    run("pretrain", argv)
    cut.mkdir()
    shutil.copytree(straight / "checkpoint-4", cut / "checkpoint-4")  # what a kill after step 4 leaves
    run("pretrain", [*pretrain_argv(small_data, cut, "--save_strategy", "no"), "--max_steps", "6",
                     "--resume_from_checkpoint", "true"])  # fmt: skip
    assert logged_losses(cut)[-2:] == pytest.approx(logged_losses(straight)[-2:], rel=1e-6)
    resumed, uninterrupted = load_file(cut / "model.safetensors"), load_file(straight / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-6, atol=1e-7, msg=name)


def test_resume_passes_over_a_damaged_newest_checkpoint_and_names_it(small_data, tmp_path, capsys):
    """A kill during a checkpoint write leaves it without trainer_state.json (written last) or with truncated
    weights: resuming takes the newest complete checkpoint, says which it passed over, and ends where an
    uninterrupted run does."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    argv = [*pretrain_argv(small_data, straight, "--save_strategy", "steps", "--save_steps", "2"), "--max_steps", "6"]
    run("pretrain", argv)
    cut.mkdir()
    for step in (2, 4, 6):
        shutil.copytree(straight / f"checkpoint-{step}", cut / f"checkpoint-{step}")
    (cut / "checkpoint-6" / "trainer_state.json").unlink()  # killed before the state was written
    weights = cut / "checkpoint-4" / "model.safetensors"
    with open(weights, "r+b") as handle:  # and a truncated model in the one before
        handle.truncate(weights.stat().st_size // 2)
    resume = [*pretrain_argv(small_data, cut, "--save_strategy", "no"), "--max_steps", "6", "--resume_from_checkpoint"]
    with pytest.raises(RecipeError, match=r"checkpoint-4: model\.safetensors is damaged"):
        run("pretrain", [*resume, str(cut / "checkpoint-4")])
    run("pretrain", [*resume, "true"])
    err = capsys.readouterr().err
    assert (
        "skipping" in err and "checkpoint-6: no trainer_state.json" in err and "checkpoint-4: model.safetensors" in err
    )
    assert [e["step"] for e in log_history(cut) if "loss" in e][-4:] == [3, 4, 5, 6]  # resumed from checkpoint-2
    assert logged_losses(cut)[-4:] == pytest.approx(logged_losses(straight)[-4:], rel=1e-6)
    for step in (4, 6):
        shutil.rmtree(cut / f"checkpoint-{step}")
    (cut / "checkpoint-2" / "trainer_state.json").write_text("{")
    with pytest.raises(RecipeError, match="no complete checkpoint.*trainer_state.json does not parse"):
        run("pretrain", [*resume, "true"])


def stage_argv(stage, small_data, pretrained, out):
    """A short run of `stage` on the small data (SFT from the pretrained fixture)."""
    if stage == "pretrain":
        return pretrain_argv(small_data, out)
    return [
        "--config", str(ROOT / "recipes/tiny/sft.yaml"),
        "--model_name_or_path", str(pretrained[0]),
        "--dataset_files", str(small_data["sft"]),
        "--output_dir", str(out),
        "--learning_rate", "5e-3",
        *FAST,
    ]  # fmt: skip


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_a_sigkilled_run_resumes_to_the_uninterrupted_result(stage, small_data, pretrained, tmp_path):
    """SIGKILL a pretraining or SFT process at a random moment after its step-4 checkpoint (possibly in the middle
    of a later checkpoint's write), resume with `--resume_from_checkpoint true`: the final weights equal an
    uninterrupted run's (same tolerance as the copied-checkpoint test: float32 sums in another order), and so do the
    logged losses (data order, schedule) and the token counter."""
    steps = ["--max_steps", "120", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(stage, [*stage_argv(stage, small_data, pretrained, straight), *steps])
    done = sigkill_after_checkpoint(
        f"recipes/{stage}.py", [*stage_argv(stage, small_data, pretrained, killed), *steps], killed
    )
    assert 4 <= max(done) < 120, done  # killed mid-run
    assert all(checkpoint_problem(killed / f"checkpoint-{step}") is None for step in done)  # whole or absent
    run(stage, [*stage_argv(stage, small_data, pretrained, killed), *steps, "--resume_from_checkpoint", "true"])
    resumed, uninterrupted = load_file(killed / "model.safetensors"), load_file(straight / "model.safetensors")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-6, atol=1e-7, msg=name)
    assert logged_losses(killed)[-10:] == pytest.approx(logged_losses(straight)[-10:], rel=1e-5)
    tokens = [max(e.get("num_input_tokens_seen", 0) for e in log_history(d)) for d in (killed, straight)]
    assert tokens[0] == tokens[1]
    assert not (killed / STAGING).exists()


KILL_IN_SAVE = """
import os, signal, sys
import transformers
from recipes import pretrain

write = transformers.Trainer._save_rng_state


def killed_halfway(self, output_dir):  # the model and optimizer are written, the RNG state and trainer state not
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, output_dir)


transformers.Trainer._save_rng_state = killed_halfway
pretrain.main(*pretrain.make_parser().parse_args_and_config(sys.argv[1:]))
"""


def test_a_kill_during_a_checkpoint_write_leaves_only_whole_checkpoints(small_data, tmp_path):
    """Checkpoints are written into `.partial/` and renamed into place: killed in the middle of the step-4 save, the
    run leaves checkpoint-2 whole, no checkpoint-4 at all, and the half-written one in `.partial/`; resuming takes
    checkpoint-2, clears `.partial/` at its next save and ends where an uninterrupted run does."""
    steps = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run("pretrain", [*pretrain_argv(small_data, straight), *steps])
    process = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, *pretrain_argv(small_data, killed), *steps],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert process.returncode == -9, process.stderr[-2000:]
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoint_problem(killed / "checkpoint-2") is None
    partial = killed / STAGING / "checkpoint-4"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    run("pretrain", [*pretrain_argv(small_data, killed), *steps, "--resume_from_checkpoint", "true"])
    assert not (killed / STAGING).exists()
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert logged_losses(killed)[-4:] == pytest.approx(logged_losses(straight)[-4:], rel=1e-6)


def test_atomic_checkpoints_keep_the_save_total_limit(small_data, tmp_path):
    out = tmp_path / "limited"
    argv = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2"]
    run("pretrain", [*pretrain_argv(small_data, out), *argv])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    assert not (out / STAGING).exists()


def test_a_full_disk_mid_run_keeps_the_finished_checkpoints(small_data, tmp_path, monkeypatch):
    """A save that fails (here: ENOSPC while writing the step-4 checkpoint) stops the run with one message saying the
    earlier checkpoints are intact; checkpoint-2 is whole, nothing of checkpoint-4 remains, and resuming works."""
    import errno

    import transformers

    write = transformers.Trainer._save_rng_state

    def disk_full(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", disk_full)
    out = tmp_path / "full"
    steps = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2"]
    with pytest.raises(OSError, match=r"writing checkpoint-4 failed \(No space left on device\).*are intact"):
        run("pretrain", [*pretrain_argv(small_data, out), *steps])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and not (out / STAGING).exists()
    assert checkpoint_problem(out / "checkpoint-2") is None
    monkeypatch.undo()
    run("pretrain", [*pretrain_argv(small_data, out), *steps, "--resume_from_checkpoint", "true"])
    assert (out / "checkpoint-6").is_dir() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("where", "message"),
    [("file", r"cannot be created: .*not_a_folder is a file"), ("/sys", "is not writable: /sys")],
)
def test_an_unwritable_output_dir_stops_before_training(small_data, tmp_path, where, message):
    if where == "file":
        (tmp_path / "not_a_folder").write_text("a file")
        out = tmp_path / "not_a_folder" / "run"
    else:
        out = Path("/sys/minimind_hf_run")  # sysfs takes no new files, even from root
    with pytest.raises(RecipeError, match=message):
        run("pretrain", pretrain_argv(small_data, out))


def test_tensorboard_reporting_writes_events(small_data, tmp_path):
    out = tmp_path / "tb"
    run("pretrain", [*pretrain_argv(small_data, out, "--max_steps", "2"), "--report_to", "tensorboard"])
    assert list(out.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset_files", "/nonexistent/pretrain.jsonl"], "pretrain.jsonl"),
        (["--preset", "minimind2-small", "--model_name_or_path", "PRETRAINED"], "hidden_size"),
    ],
)
def test_bad_input_stops_before_writing(small_data, pretrained, tmp_path, extra, message):
    out = tmp_path / "never"
    extra = [str(pretrained[0]) if x == "PRETRAINED" else x for x in extra]
    with pytest.raises((RecipeError, FileNotFoundError, ValueError), match=message):
        run("pretrain", pretrain_argv(small_data, out, *extra))
    assert not out.exists()


def test_malformed_jsonl_line_stops_before_writing(small_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"bad\.jsonl.*2.*text"):
        run("pretrain", pretrain_argv(small_data, out, "--dataset_files", str(bad)))
    assert not out.exists()


def test_packed_rows_through_the_model_equal_separate_documents(small_data):
    from minimind_hf.data import load_pretrain_dataset

    tokenizer = load_tokenizer()
    dataset = load_pretrain_dataset([small_data["pretrain"]], bos_token=tokenizer.bos_token).select(range(6))
    packed = tokenize_and_pack(dataset, tokenizer, max_length=64)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id)([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= 64
    model = tiny_model()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    row, start = 0, 0
    for length in packed[0]["seq_lengths"]:
        doc = batch["input_ids"][row : row + 1, start : start + length]
        with torch.no_grad():
            alone = model(doc).logits
        assert (logits[row, start : start + length] - alone[0]).abs().max() < 1e-5
        assert (batch["labels"][row, start] == -100) and (batch["labels"][row, start + 1 : start + length] >= 0).all()
        start += length
    assert (batch["labels"][batch["input_ids"] == tokenizer.pad_token_id] == -100).all()


def test_two_process_gloo_ddp_matches_one_process(small_data, tmp_path):
    """Same global batch (2 processes x 2 rows vs 1 process x 4 rows), same data order: same weights after training."""
    import os
    import subprocess

    from safetensors.torch import load_file

    common = [
        "recipes/pretrain.py", "--config", "recipes/tiny/pretrain.yaml",
        "--dataset_files", str(small_data["pretrain"]), "--config_overrides", SMALL,
        "--max_steps", "3", "--learning_rate", "5e-3", "--max_length", "64",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        # One order for both runs: the single process's random sampler and accelerate's seedable one differ.
        "--train_sampling_strategy", "sequential",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    one = subprocess.run(
        [sys.executable, *common, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "one")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/ddp.yaml"]
    launch += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0"]
    two = subprocess.run(
        [*launch, *common, "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    state_one = json.loads((tmp_path / "one/trainer_state.json").read_text())
    state_two = json.loads((tmp_path / "two/trainer_state.json").read_text())
    assert state_two["global_step"] == state_one["global_step"] == 3
    losses_one = [e["loss"] for e in state_one["log_history"] if "loss" in e]
    losses_two = [e["loss"] for e in state_two["log_history"] if "loss" in e]
    assert losses_one == pytest.approx(losses_two, abs=2e-3)
    weights_one = load_file(tmp_path / "one/model.safetensors")
    weights_two = load_file(tmp_path / "two/model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-4, rtol=1e-3, msg=name)
    # Training moved the weights far more than the tolerance: the comparison is not vacuous.
    assert (weights_one["model.norm.weight"] - 1).abs().max() > 1e-2


def test_a_tokenizer_larger_than_the_vocabulary_is_refused():
    args = ModelArguments(preset="tiny", config_overrides={"vocab_size": 1000})
    with pytest.raises(RecipeError, match=r"tokenizer has 6400 tokens but the model's embedding has only 1000 rows"):
        build_model(args, load_tokenizer())


STAGES = ["pretrain", "sft", "lora", "merge_lora", "dpo", "distill", "reason", "train_tokenizer", "quickstart"]


def test_every_recipe_runs_as_a_module_from_any_folder():
    """Each recipe exports `make_parser()` and `main`, and `python -m recipes.<stage>` (run here through `runpy`, as
    `-m` does, all in one interpreter started outside the repository) reaches its parser without path edits.
    `python recipes/<stage>.py` runs for every documented command in tests/test_docs.py."""
    import importlib

    for stage in STAGES:
        module = importlib.import_module(f"recipes.{stage}")
        assert callable(module.main) and module.make_parser().dataclass_types, stage
    script = (
        "import contextlib, io, runpy, sys\n"
        f"for stage in {STAGES!r}:\n"
        "    sys.argv = [stage, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        runpy.run_module(f'recipes.{stage}', run_name='__main__')\n"
        "    assert '--output_dir' in out.getvalue(), stage\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_a_non_finite_gradient_stops_the_run_before_the_update_or_is_skipped(small_data, tmp_path):
    from safetensors.torch import load_file

    # lr 1e30: the first update sends the weights to ~1e30, so the second step's loss and gradients overflow to NaN
    extra = ["--learning_rate", "1e30", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "1"]
    with pytest.raises(FloatingPointError, match=r"step 2: the gradient of model\.\S+ is not finite.*checkpoint-1"):
        run("pretrain", pretrain_argv(small_data, tmp_path / "stop", *extra))
    saved = sorted(p.name for p in (tmp_path / "stop").glob("checkpoint-*"))
    assert saved == ["checkpoint-1"]  # nothing written from the poisoned step
    first = load_file(tmp_path / "stop" / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in first.values())

    run("pretrain", pretrain_argv(small_data, tmp_path / "skip", *extra, "--nonfinite", "skip"))
    history = log_history(tmp_path / "skip")
    assert max(e.get("nonfinite_skipped", 0) for e in history) == 3  # steps 2-4
    last = load_file(tmp_path / "skip" / "model.safetensors")
    assert all(torch.equal(last[k], first[k]) for k in first)  # skipped steps left every weight as it was


def test_passkey_yaml_trains_the_pretraining_recipe_on_the_passkey_stage():
    """recipes/tiny/passkey.yaml continues the quickstart's pretraining on the curriculum's passkey training file;
    a stage without one stops with a clear error."""
    data_args, training_args, model_args = pretrain.make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes/tiny/passkey.yaml")]
    )
    assert model_args.model_name_or_path == "outputs/quickstart/pretrain" and training_args.max_length == 256
    files, _ = data_args.files("pretrain")
    assert [Path(f).parts[-2:] for f in files] == [("passkey", "train.jsonl")]
    data_args.curriculum_stage = "no_such_stage"
    with pytest.raises(RecipeError, match="curriculum_stage: 'no_such_stage' has no training file"):
        data_args.files("pretrain")
