"""The quickstart (README's first command): a shortened run writes a complete metrics.json atomically and prints its
report with the per-kind breakdown; the real run (slow, on curriculum seeds 0 and 1) answers held-out questions whose
facts it saw only in pretraining; recipes/seeds.py summarises runs over seeds."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minimind_hf.tokenization import load_tokenizer
from recipes import quickstart, seeds
from tests.utils import SMALL, briefly_trained, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def shortened(tmp_path, stage, **changes):
    config = yaml.safe_load((ROOT / f"recipes/tiny/{stage}.yaml").read_text())
    config.update(changes)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def shortened_args(tmp_path) -> list[str]:
    pretrain = shortened(tmp_path, "pretrain", max_steps=3, logging_steps=1, config_overrides=SMALL, max_length=64)
    sft = shortened(tmp_path, "sft", max_steps=2, logging_steps=1, max_length=128)
    return ["--pretrain_config", pretrain, "--sft_config", sft, "--samples", "3"]


# tqdm's progress bars: "Map: 100%|####| 64/64 [00:00<00:00, 812.3 examples/s]", " 33%|###  | 1/3 [00:01<00:02, 1.1s/it]",
# and without a known total (datasets reading a file the first time): "Generating train split: 2810 examples [00:00, ...]"
PROGRESS_BAR = re.compile(r"^([^|]*\d+%\|.*\|.*|[^|\[]*: \d+ examples *)\[[\d:<?]+.*\]$")


def test_shortened_quickstart_writes_metrics_and_reports_on_a_clean_terminal(tmp_path):
    """The README's first command, shortened, as a user runs it: metrics.json written atomically, the report on
    stdout, and on stderr nothing but progress bars (no deprecation warnings, no library chatter)."""
    out = tmp_path / "qs"
    run = subprocess.run(
        [sys.executable, str(ROOT / "recipes/quickstart.py"), "--output_dir", str(out), *shortened_args(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert not (out / "metrics.json.tmp").exists() and not (out / "dry_run").exists()
    for stage in ("pretrain", "sft"):
        assert metrics[stage]["tokens"] > 0 and metrics[stage]["tokens_per_s"] > 0
        assert metrics[stage]["first_loss"] is not None and metrics[stage]["last_loss"] is not None
        assert (out / stage / "model.safetensors").exists()
    assert {"all", "sft_entities", "pretrain_only", "arith"} <= set(metrics["eval"])
    assert {"all", "sft_taught", "sft_entities", "pretrain_only", "arith"} <= set(metrics["cloze"])
    # the breakdown: per kind, per kind and relation, per language, for both evaluations
    people = {"person", "person.city", "person.job", "person.colour", "person.age", "lang.en", "lang.zh"}
    assert people <= set(metrics["eval_breakdown"]["pretrain_only"])
    assert re.search(r"^ +person\.city \(\d+\) +(\d+\.\d%|-) +\d+\.\d% +\d+\.\d%$", run.stdout, re.M)
    # the Q/A-page probe of the pretrained model asks the chat QA questions: the same splits and groups
    assert set(metrics["faq"]) == {"all", "sft_entities", "pretrain_only"}
    assert set(metrics["faq_breakdown"]["pretrain_only"]) == set(metrics["eval_breakdown"]["pretrain_only"])
    assert {"invention.inventor", "city.country"} <= set(metrics["cloze_breakdown"]["sft_taught"])
    # bits per byte on the curriculum's held-out text, after pretraining and after SFT, in the report too
    for stage in ("pretrain", "sft"):
        text = metrics["text"][stage]
        assert text["documents"] > 400 and text["bytes"] > text["tokens"] > 0 and text["bits_per_byte"] > 0
    assert re.search(
        r"^held-out text \(\d+ documents, \d+ bytes\): pretrain \d\.\d{3} bits per byte", run.stdout, re.M
    )
    assert metrics["curriculum_seed"] == 0
    assert len(metrics["samples"]) == 3 and {"question", "answer", "expected", "correct"} <= set(metrics["samples"][0])
    assert metrics["wall_time_s"] > 0 and metrics["threads"] >= 1

    lines = run.stdout.splitlines()
    assert lines[0].startswith("== 0/3 dry run") and lines[1].strip().startswith("ok in")
    assert any(line.startswith("held-out exact match:") for line in lines) and str(out / "metrics.json") in lines[-1]
    chatter = [
        line for line in re.split(r"[\r\n]+", run.stderr) if line.strip() and not PROGRESS_BAR.match(line.strip())
    ]
    assert not chatter, "\n".join(chatter[:20])


def test_quickstart_fails_in_the_dry_run_before_training(tmp_path, monkeypatch):
    """An evaluation that would crash after minutes of training crashes in the seconds-long dry run instead."""

    def broken(records, generate):
        raise RuntimeError("evaluation is broken")

    monkeypatch.setattr(quickstart, "evaluate_with_breakdown", broken)
    out = tmp_path / "qs"
    args = quickstart.QuickstartArguments(output_dir=str(out))
    args.pretrain_config, args.sft_config = shortened_args(tmp_path)[1:4:2]
    with pytest.raises(RuntimeError, match="evaluation is broken"):
        quickstart.main(args)
    assert (out / "dry_run" / "pretrain" / "model.safetensors").exists()  # it got that far ...
    assert not (out / "pretrain").exists() and not (out / "metrics.json").exists()  # ... and no further


def test_cached_decoding_check_catches_a_dropped_cache(monkeypatch):
    """The dry run's cache check fails loudly on the silent failure transformers 5.24 caused: a model that receives
    no cache from `generate` and decodes every step from its newest token alone."""
    model = briefly_trained(tiny_model())
    tokenizer = load_tokenizer()
    quickstart.check_cached_decoding(model, tokenizer)
    forward = model.model.forward

    def without_cache(*args, **kwargs):
        kwargs.pop("past_key_values", None)
        kwargs.pop("cache", None)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", without_cache)
    with pytest.raises(RuntimeError, match="cached greedy decoding disagrees"):
        quickstart.check_cached_decoding(model, tokenizer)


# The held-out chat QA the full quickstart measured per curriculum seed (`make seeds`, 2 threads; README "What the
# quickstart shows"): each seed's run must stay within 6 points of it (the same seed has measured 4 points apart on
# two machines of this project: 92.5% and 88.4% sft_entities).
MEASURED = {0: {"sft_entities": 0.884, "pretrain_only": 0.805}, 1: {"sft_entities": 0.863, "pretrain_only": 0.860}}
# What every seed should reach.
TARGET = {"sft_entities": 0.85, "pretrain_only": 0.65}


@pytest.fixture(scope="module", params=sorted(MEASURED), ids=lambda seed: f"seed{seed}")  # `-k seed0`: one slow part
def full_quickstart(request, tmp_path_factory):
    """The full quickstart on one curriculum seed (one world: its own names and facts), about nine minutes on two quiet
    cores; shared by the tests below."""
    out = tmp_path_factory.mktemp(f"qs-seed{request.param}")
    metrics = quickstart.main(quickstart.QuickstartArguments(output_dir=str(out), curriculum_seed=request.param))
    print(json.dumps({k: metrics[k] for k in ("pretrain", "sft", "cloze", "faq", "eval", "wall_time_s")}, indent=1))
    return request.param, metrics


@pytest.mark.slow
def test_quickstart_transfers_pretraining_facts_into_chat(full_quickstart):
    """Pretraining memorises the facts (cloze recall of the entity splits); SFT answers chat questions from them, at
    what this seed measured."""
    seed, metrics = full_quickstart
    assert metrics["pretrain"]["last_loss"] < metrics["pretrain"]["first_loss"] / 5
    # pretraining compresses unseen documents of its distribution far below a uniform guess over the vocabulary
    text = metrics["text"]["pretrain"]
    uniform = math.log2(6400) * text["tokens"] / text["bytes"]
    assert text["bits_per_byte"] < uniform / 4, (text, uniform)
    for split in ("sft_taught", "sft_entities", "pretrain_only"):
        assert metrics["cloze"][split] >= 0.95, split
    for split, measured in MEASURED[seed].items():
        assert metrics["eval"][split] >= measured - 0.06, (split, metrics["eval_breakdown"][split])


@pytest.mark.slow
def test_quickstart_reaches_the_target_on_every_seed(full_quickstart):
    _, metrics = full_quickstart
    assert all(metrics["eval"][split] >= target for split, target in TARGET.items())


def test_seeds_report_reads_each_seed_and_summarises(tmp_path, capsys):
    """recipes/seeds.py over seeds whose quickstart already ran: nothing is retrained, every metric of every seed is
    summarised (mean, min, max, per seed; hand-computed here), breakdown cells by their mean, and the table printed."""
    for seed, (entities, city, wall) in {3: (0.8, 0.5, 400.0), 7: (0.9, 1.0, 500.0)}.items():
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        metrics = {
            "eval": {"sft_entities": entities},
            "eval_breakdown": {"pretrain_only": {"person.city": {"mean": city, "n": 32}}},
            "pretrain": {"last_loss": 0.5 + seed / 10},
            "samples": [{"correct": True}],
            "curriculum_seed": seed,
            "wall_time_s": wall,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    summary = seeds.main(seeds.SeedsArguments(output_dir=str(tmp_path), seeds=[3, 7]))
    assert summary["eval.sft_entities"] == {
        "mean": pytest.approx(0.85),
        "min": 0.8,
        "max": 0.9,
        "seeds": {"3": 0.8, "7": 0.9},
    }
    assert summary["eval_breakdown.pretrain_only.person.city"]["mean"] == 0.75
    assert summary["pretrain.last_loss"]["max"] == pytest.approx(1.2) and summary["wall_time_s"]["min"] == 400.0
    assert not any(name.startswith("samples") for name in summary)
    assert json.loads((tmp_path / "seeds.json").read_text())["metrics"] == summary
    assert not (tmp_path / "seed-3" / "pretrain").exists()  # read, not rerun
    table = capsys.readouterr().out
    assert "| eval.sft_entities | 85.0% | 80.0% | 90.0% | 80.0% | 90.0% |" in table
    assert "| eval_breakdown.pretrain_only.person.city | 75.0% | 50.0% | 100.0% |" in table
    assert "| wall_time_s | 450 | 400 | 500 |" in table


def test_effect_measurements_reach_the_seeds_report(tmp_path, monkeypatch):
    """The slow effect tests' `report` merges each stage's numbers into MINIMIND_HF_EFFECTS_REPORT, which
    recipes/seeds.py --effects reads per seed and flattens beside the quickstart's metrics."""
    from tests import test_post_training_effects as effects

    path = tmp_path / "effects.json"
    monkeypatch.setenv(effects.REPORT_ENV, str(path))
    effects.report("dpo", accuracy_before={"all": 0.7}, accuracy_after={"all": 0.75}, example="text")
    effects.report("distill", kl_distilled=2.2)
    assert json.loads(path.read_text())["dpo"]["accuracy_after"] == {"all": 0.75}
    flat = seeds.flatten(json.loads(path.read_text()), "effects.")
    assert flat == {
        "effects.dpo.accuracy_before.all": 0.7,
        "effects.dpo.accuracy_after.all": 0.75,
        "effects.distill.kl_distilled": 2.2,
    }
    assert not list(tmp_path.glob("*.tmp"))
