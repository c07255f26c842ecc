"""The slow tier's plumbing, in the default suite: the on-disk SFT-base cache its parts share, and the Makefile's
parts, which together must run every slow test exactly once."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes import pretrain, sft
from tests import utils

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_recipes(monkeypatch, tmp_path):
    """The pretrain and SFT recipes replaced by stubs that record their runs and write a model folder's config (the
    real recipes take minutes; what is tested here is the cache around them)."""
    runs = []

    def stub(name):
        def main(_data_args, training_args, _model_args):
            runs.append(name)
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(training_args.output_dir) / "config.json").write_text("{}")

        return main

    monkeypatch.setattr(pretrain, "main", stub("pretrain"))
    monkeypatch.setattr(sft, "main", stub("sft"))
    monkeypatch.setenv("MINIMIND_HF_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIMIND_HF_SFT_BASE", raising=False)
    return runs


QUIET = ["--report_to", "none", "--save_strategy", "no"]


def test_sft_base_is_built_once_then_read_from_the_cache(fake_recipes, tmp_path_factory, tmp_path):
    first = utils.build_sft_base(tmp_path_factory, QUIET)
    assert fake_recipes == ["pretrain", "sft"]
    assert first.parent == tmp_path / "cache" and (first / "config.json").is_file()
    assert [p.name for p in first.parent.iterdir()] == [first.name], "no staging folder is left behind"
    assert utils.build_sft_base(tmp_path_factory, QUIET) == first
    assert fake_recipes == ["pretrain", "sft"], "the second call trained again"
    other = utils.build_sft_base(tmp_path_factory, QUIET, "--replay_docs", "0")
    assert other != first and fake_recipes == ["pretrain", "sft"] * 2


def test_a_failed_build_leaves_no_base(fake_recipes, tmp_path_factory, tmp_path, monkeypatch):
    def broken(*_args):
        raise RuntimeError("killed mid-SFT")

    monkeypatch.setattr(sft, "main", broken)
    with pytest.raises(RuntimeError, match="killed mid-SFT"):
        utils.build_sft_base(tmp_path_factory, QUIET)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_key_follows_what_decides_the_weights(monkeypatch):
    key = utils.sft_base_key(QUIET, ())
    assert key == utils.sft_base_key(list(QUIET), ())
    assert key != utils.sft_base_key(QUIET, ("--replay_docs", "0"))
    assert key != utils.sft_base_key([*QUIET, "--curriculum_seed", "1"], ())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    assert key != utils.sft_base_key(QUIET, ()), "another thread count sums floats in another order"


def slow_parts() -> dict[str, list[str]]:
    text = (ROOT / "Makefile").read_text()
    names = re.search(r"^SLOW_PARTS := (.+)$", text, re.M).group(1).split()
    return {name: re.search(rf"^SLOW_{name} := (.+)$", text, re.M).group(1).split() for name in names}


def in_part(test: str, args: list[str]) -> bool:
    """Whether `pytest -m slow <args>` selects the collected `test`: the part's files, and its `-k` name if any
    (kept to a plain name, which selects by substring, so this reading of it is pytest's)."""
    files = [arg for arg in args if arg.endswith(".py")]
    names = [args[i + 1] for i, arg in enumerate(args) if arg == "-k"]
    assert all(name.isidentifier() for name in names), f"keep -k to one plain name: {names}"
    assert len(files) + 2 * len(names) == len(args), f"unexpected pytest arguments in a slow part: {args}"
    return test.split("::")[0] in files and all(name in test.split("::", 1)[1] for name in names)


def test_the_slow_parts_run_every_slow_test_exactly_once():
    # transformers' own @slow conformance tests (GPU, flash attention; skipped by their own RUN_SLOW condition) are
    # not ours to run.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:xdist",
            "-m",
            "slow",
            "--ignore",
            "tests/test_transformers_common.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    slow = [line for line in result.stdout.splitlines() if "::" in line]
    parts = slow_parts()
    assert slow and len(parts) >= 4
    for test in slow:
        owners = [name for name, args in parts.items() if in_part(test, args)]
        assert len(owners) == 1, f"{test} runs in {owners or 'no part'}"
    for name, args in parts.items():
        assert any(in_part(test, args) for test in slow), f"part {name} selects no slow test"
