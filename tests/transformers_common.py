"""transformers' own common model tests, taken from the source distribution of the installed transformers.

The test files are not in the wheel. `load()` downloads the sdist of the installed version with pip (once; it is kept
under `.cache/transformers-tests/<version>/`, written to a temporary folder and renamed into place) and imports its
`tests/` folder as the package `transformers_tests`. The sdist carries the common mixins (`test_modeling_common.py`,
`test_configuration_common.py`) but not three modules they import: `tests/exporters/test_export.py`,
`tests/generation/test_utils.py` and `tests/utils/test_configuration_utils.py`. Where the sdist lacks one, a
stand-in with just the imported name is written (below); the tests that would need the real file are skipped by name
in `tests/test_transformers_common.py`.

Without the files (no network to PyPI) the conformance tests skip, unless `MINIMIND_HF_REQUIRE_COMMON_TESTS=1`
(set by CI), which turns that into a failure. `MINIMIND_HF_TRANSFORMERS_TESTS=<folder>` points at an unpacked
`tests/` folder instead.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "transformers-tests"
PACKAGE = "transformers_tests"

# The names the common mixins import from files the sdist does not ship, with what stands in for them.
STAND_INS = {
    # The export tests live in this mixin; without the file there are none to inherit.
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    # Only `test_generation_tester_mixin_inheritance` reads it (skipped); generate is tested in tests/test_modeling.py.
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # `ConfigTester.check_config_arguments_init` sets these and reads them back: common PreTrainedConfig fields, each
    # away from its default.
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["MiniMindForCausalLM"],\n'
        '    "problem_type": "regression",\n'
        '    "id2label": {0: "bad", 1: "good"},\n'
        '    "label2id": {"bad": 0, "good": 1},\n'
        "}\n"
    ),
}


def _download(version: str, into: Path) -> None:
    """The sdist's top-level `tests/*.py` (plus stand-ins) in `into/transformers_tests/`."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            + ["--dest", tmp, f"transformers=={version}"],
            check=True,
            capture_output=True,
            text=True,
        )
        (archive,) = Path(tmp).glob("transformers-*.tar.gz")
        staging = Path(tempfile.mkdtemp(dir=into.parent, prefix=f".{version}-"))
        package = staging / PACKAGE
        package.mkdir()
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                relative = member.name[len(prefix) :] if member.name.startswith(prefix) else ""
                if member.isfile() and relative.endswith(".py") and "/" not in relative:
                    (package / relative).write_bytes(tar.extractfile(member).read())
    (package / "__init__.py").touch()
    for relative, text in STAND_INS.items():
        target = package / relative
        target.parent.mkdir(exist_ok=True)
        (target.parent / "__init__.py").touch()
        if not target.exists():
            target.write_text(text)
    try:
        staging.rename(into)
    except OSError:  # another process put it there first
        shutil.rmtree(staging, ignore_errors=True)


def tests_root() -> Path:
    """The folder holding the `transformers_tests` package for the installed transformers (downloaded if needed)."""
    override = os.environ.get("MINIMIND_HF_TRANSFORMERS_TESTS")
    if override:
        return Path(override)
    root = CACHE / transformers.__version__
    if not (root / PACKAGE / "test_modeling_common.py").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        _download(transformers.__version__, root)
    return root


def load():
    """(ModelTesterMixin, ConfigTester, ids_tensor, random_attention_mask) from transformers' common tests; skips the
    calling test module when they cannot be had (fails under MINIMIND_HF_REQUIRE_COMMON_TESTS=1)."""
    import pytest

    try:
        root = tests_root()
        sys.path.insert(0, str(root))
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except (OSError, subprocess.CalledProcessError, ImportError, ValueError) as error:
        detail = getattr(error, "stderr", "") or error
        message = f"transformers {transformers.__version__}'s common tests unavailable: {detail}"
        if os.environ.get("MINIMIND_HF_REQUIRE_COMMON_TESTS") == "1":
            raise RuntimeError(message) from error
        pytest.skip(message, allow_module_level=True)
    return modeling.ModelTesterMixin, configuration.ConfigTester, modeling.ids_tensor, modeling.random_attention_mask
