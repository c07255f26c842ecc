"""MiniMind -> native transformers folders (Llama / Qwen3 / Qwen3-MoE / Mixtral): logit parity, layouts, refusals."""

import json
import runpy
from pathlib import Path

import pytest
import torch
from convert_support import PROMPTS, make_tokenizer, max_logit_diff, save_folder, trained
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from minimind_hf.converters import ConversionError, export_native

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "dense": ("LlamaForCausalLM", "model.layers.0.mlp.gate_proj.weight"),
    "qk_norm": ("Qwen3ForCausalLM", "model.layers.0.self_attn.q_norm.weight"),
    "moe_top1": ("Qwen3MoeForCausalLM", "model.layers.0.mlp.experts.3.down_proj.weight"),
    "moe_shared": ("MixtralForCausalLM", "model.layers.0.block_sparse_moe.experts.3.w2.weight"),
}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _prompt_ids():
    return make_tokenizer()(PROMPTS, return_tensors="pt", padding=True)["input_ids"]


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_native_export_logit_parity(variant, tmp_path):
    model = trained(variant)
    out = export_native(save_folder(model, tmp_path / "src"), tmp_path / "native")
    architecture, per_expert_key = EXPECTED[variant]
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    with safe_open(out / "model.safetensors", "pt") as f:
        # Per-expert keys: the on-disk layout vLLM loads (transformers stacks them itself on load).
        assert per_expert_key in f.keys()
    assert {"tokenizer.json", "chat_template.jinja", "generation_config.json"} <= {p.name for p in out.iterdir()}

    native = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(native).__name__ == architecture
    ids = _prompt_ids()
    assert max_logit_diff(_logits(model, ids), _logits(native, ids)) <= 1e-5


def test_shared_expert_folding_widens_experts(tmp_path):
    model = trained("moe_shared")
    out = export_native(model, tmp_path / "mixtral")
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 2 * model.config.moe_intermediate_size
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == 2


def test_yarn_carried_through(tmp_path):
    model = trained("dense", yarn=True)
    out = export_native(model, tmp_path / "llama")
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["attention_factor"] == 1.0 and rope["factor"] == 4.0
    native = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 150), generator=torch.Generator().manual_seed(0))
    assert max_logit_diff(_logits(model, ids), _logits(native, ids)) <= 1e-5


@pytest.mark.parametrize(
    ("variant", "overrides", "target", "message"),
    [
        ("moe_shared", {"norm_topk_prob": False}, "auto", "norm_topk_prob=True"),
        ("moe_shared", {"num_shared_experts": 0, "norm_topk_prob": False}, "mixtral", "always renormalises"),
        ("qk_norm", {}, "llama", "QK-norm"),
        ("dense", {}, "qwen3", "QK-norm"),
        ("dense", {}, "mixtral", "sparse-MoE"),
        ("dense", {}, "gpt2", "unknown target"),
    ],
)
def test_refuses_what_target_cannot_represent(variant, overrides, target, message, tmp_path):
    from tests.utils import tiny_model

    with pytest.raises(ConversionError, match=message):
        export_native(tiny_model(variant, **overrides), tmp_path / "out", target=target)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_bad_folders_give_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from tests.utils import tiny_model

    src = save_folder(tiny_model("dense", vocab_size=6400), tmp_path / "src")
    weights = load_file(src / "model.safetensors")

    missing = dict(weights)
    del missing["model.layers.1.self_attn.k_proj.weight"]
    save_file(missing, src / "model.safetensors")
    with pytest.raises(ConversionError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj\.weight"):
        export_native(src, tmp_path / "out")

    wrong = dict(weights)
    wrong["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(wrong, src / "model.safetensors")
    with pytest.raises(
        ConversionError, match=r"shape mismatch for model\.layers\.0\.mlp\.up_proj\.weight.*\[100, 64\]"
    ):
        export_native(src, tmp_path / "out")

    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(ConversionError, match="unknown architecture model_type='gpt_neox'"):
        export_native(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_output_is_atomic_and_not_overwritten_by_default(tmp_path):
    model = trained("dense")
    out = export_native(model, tmp_path / "native")
    with pytest.raises(ConversionError, match="already exists"):
        export_native(model, out)
    (out / "marker").write_text("old")
    export_native(model, out, overwrite=True)
    assert not (out / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]


def _cli(script: str):
    return runpy.run_path(str(REPO / "convert" / script), run_name="cli")["main"]


def test_cli_scripts(tmp_path, capsys):
    src = save_folder(trained("qk_norm"), tmp_path / "src")
    out = _cli("to_native.py")(["--model", str(src), "--out", str(tmp_path / "qwen3")])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert _cli("to_gguf.py")(["--model", str(src), "--out", str(tmp_path / "m.gguf"), "--outtype", "q8_0"]).is_file()
    with pytest.raises(SystemExit, match="error: LlamaForCausalLM cannot represent this model exactly"):
        _cli("to_native.py")(["--model", str(src), "--out", str(tmp_path / "llama"), "--target", "llama"])
    for script in ("upstream_to_hf.py", "to_native.py", "to_gguf.py", "to_ollama.py", "to_hub.py"):
        with pytest.raises(SystemExit):
            _cli(script)(["--help"])
        assert "python convert/" + script in capsys.readouterr().out
