"""Upstream MiniMind checkpoints in: `.pth` state dicts (shape inference, presets) and upstream HF folders."""

import json
from pathlib import Path

import pytest
import torch
from convert_support import PROMPTS, make_tokenizer, max_logit_diff
from transformers import AutoModelForCausalLM

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.converters import ConversionError
from minimind_hf.converters.common import load_state_dict
from minimind_hf.converters.upstream import (
    convert_upstream_folder,
    convert_upstream_pth,
    infer_config,
    load_upstream_pth,
)
from tests.utils import tiny_config, tiny_model

INFERRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "use_qk_norm",
    "num_experts",
    "tie_word_embeddings",
)


def _upstream_pth(model, path, prefix=""):
    """Save like upstream does: a plain fp16 state dict (tied weights become two equal tensors)."""
    torch.save({prefix + k: v.detach().half().clone() for k, v in model.state_dict().items()}, path)
    return path


def _upstream_tokenizer(path):
    """An upstream-style tokenizer folder: tokenizer.json + tokenizer_config.json with the template inline."""
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = tokenizer.chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("variant", ["dense", "qk_norm", "moe_shared", "moe_top1"])
def test_infer_config_from_shapes(variant):
    config = tiny_config(variant)
    state_dict = tiny_model(variant).state_dict()
    # Without QK-norm the head count is invisible in the shapes: it is given (upstream's default would be 8).
    heads = None if config.use_qk_norm else config.num_attention_heads
    inferred = infer_config(state_dict, num_attention_heads=heads)
    for field in INFERRED_FIELDS:
        # An MoE model has no dense MLP, so its intermediate_size is invisible (upstream: equal to the expert width).
        if not (config.num_experts and field == "intermediate_size"):
            assert getattr(inferred, field) == getattr(config, field), field
    if config.num_experts:
        assert inferred.num_shared_experts == config.num_shared_experts
        assert inferred.moe_intermediate_size == config.moe_intermediate_size
        assert inferred.num_experts_per_tok == config.num_experts_per_tok  # upstream's rule: shared -> 2, else 1
    assert inferred.rms_norm_eps == (1e-6 if config.use_qk_norm else 1e-5)


def test_upstream_preset_shapes_without_weights():
    # Real preset shapes, checked on meta tensors (no memory): MiniMind2-MoE and minimind-3 infer exactly.
    for preset in ("minimind2-small", "minimind2-moe", "minimind3", "minimind3-moe"):
        with torch.device("meta"):
            state_dict = MiniMindForCausalLM(MiniMindConfig.from_preset(preset)).state_dict()
        del state_dict["lm_head.weight"]  # meta tensors cannot be compared; a tied checkpoint may omit it
        inferred = infer_config(state_dict)
        expected = MiniMindConfig.from_preset(preset)
        for field in (*INFERRED_FIELDS, "rms_norm_eps"):
            assert getattr(inferred, field) == getattr(expected, field), (preset, field)
        if expected.num_experts:  # the balance loss keeps upstream's strength (minimind-3: see the config docs)
            assert inferred.router_aux_loss_type == expected.router_aux_loss_type, preset
            assert inferred.router_aux_loss_coef == pytest.approx(expected.router_aux_loss_coef), preset


def test_pth_to_folder_round_trip(tmp_path):
    model = tiny_model("moe_shared")
    pth = _upstream_pth(model, tmp_path / "full_sft_64_moe.pth", prefix="_orig_mod.")
    tokenizer = _upstream_tokenizer(tmp_path / "tok")
    out = convert_upstream_pth(pth, tmp_path / "out", tokenizer=tokenizer, num_attention_heads=4, yarn=True)
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "modeling_minimind.py",
        "configuration_minimind.py",
        "generation_config.json",
    } <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_minimind.MiniMindForCausalLM"
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_parameters"]["attention_factor"] == 1.0
    assert config["dtype"] == "float16"

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert loaded.config.num_experts_per_tok == 2 and loaded.config.num_shared_experts == 1
    reference = tiny_model("moe_shared", rope_parameters=dict(loaded.config.rope_parameters))
    reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    ids = make_tokenizer()(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        assert max_logit_diff(reference(ids).logits, loaded(ids).logits) == 0.0
    assert loaded.generation_config.eos_token_id == 2
    assert "<|im_start|>assistant" in make_tokenizer().apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_upstream_hf_folder(tmp_path):
    model = tiny_model("qk_norm")
    src = _upstream_tokenizer(tmp_path / "upstream")
    torch.save({k: v.detach().half().clone() for k, v in model.state_dict().items()}, src / "pytorch_model.bin")
    # minimind-3's published config: upstream field names and auto_map to upstream's own files.
    upstream_config = {
        "architectures": ["MiniMindForCausalLM"],
        "auto_map": {
            "AutoConfig": "model_minimind.MiniMindConfig",
            "AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM",
        },
        "model_type": "minimind",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 6400,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "dropout": 0.0,
        "flash_attn": True,
        "use_moe": False,
        "inference_rope_scaling": False,
        "torch_dtype": "float16",
    }
    (src / "config.json").write_text(json.dumps(upstream_config))
    out = convert_upstream_folder(src, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["use_qk_norm"] is True and "flash_attn" not in config and "use_moe" not in config
    assert config["auto_map"]["AutoModel"] == "modeling_minimind.MiniMindModel"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    ids = make_tokenizer()(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        assert max_logit_diff(model(ids).logits, loaded(ids).logits) == 0.0


def test_bad_upstream_input(tmp_path):
    tokenizer = _upstream_tokenizer(tmp_path / "tok")
    model = tiny_model("dense")

    gpt2 = tmp_path / "gpt2.pth"
    torch.save({"transformer.wte.weight": torch.zeros(10, 4)}, gpt2)
    with pytest.raises(ConversionError, match="unknown architecture: tensor model.embed_tokens.weight is missing"):
        convert_upstream_pth(gpt2, tmp_path / "out", tokenizer=tokenizer)

    missing = {k: v for k, v in model.state_dict().items() if k != "model.layers.1.mlp.down_proj.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"missing tensor model\.layers\.1\.mlp\.down_proj\.weight \[64, 128\]"):
        convert_upstream_pth(tmp_path / "missing.pth", tmp_path / "out", tokenizer=tokenizer, num_attention_heads=4)

    pth = _upstream_pth(model, tmp_path / "dense.pth")
    with pytest.raises(ConversionError, match="preset 'minimind2-small': hidden_size=512 but the checkpoint's"):
        convert_upstream_pth(pth, tmp_path / "out", tokenizer=tokenizer, preset="minimind2-small")
    with pytest.raises(ConversionError, match="num_attention_heads: 3 does not divide"):
        convert_upstream_pth(pth, tmp_path / "out", tokenizer=tokenizer, num_attention_heads=3)
    with pytest.raises(ConversionError, match="upstream's tokenizer"):
        convert_upstream_pth(pth, tmp_path / "out", tokenizer=None)

    torch.save({"model": {"config": "not a tensor"}}, tmp_path / "odd.pth")
    with pytest.raises(ConversionError, match="entry 'config'"):
        convert_upstream_pth(tmp_path / "odd.pth", tmp_path / "out", tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()


class _Payload:
    """A pickled object that would write a file when unpickled: what a crafted checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_object_in_a_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    crafted = {"model.embed_tokens.weight": torch.zeros(2, 2), "payload": _Payload(marker)}
    torch.save(crafted, tmp_path / "full_sft_512.pth")
    with pytest.raises(ConversionError, match=r"full_sft_512\.pth is not a weights-only PyTorch state dict"):
        load_upstream_pth(tmp_path / "full_sft_512.pth")
    (tmp_path / "folder").mkdir()
    torch.save(crafted, tmp_path / "folder" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"pytorch_model\.bin is not a weights-only PyTorch state dict"):
        load_state_dict(tmp_path / "folder")
    assert not marker.exists()
    # the same file without the object loads
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "plain.pth")
    assert set(load_upstream_pth(tmp_path / "plain.pth")) == {"model.embed_tokens.weight"}


def test_no_code_of_ours_unpickles_or_trusts_remote_code(tmp_path):
    """The only `torch.load` calls in the package, recipes, converters and benchmarks pass `weights_only=True`; none
    calls `pickle` / `torch.load` without it or passes `trust_remote_code=True` to a loader (the model classes are
    registered in-process, so our own folders never need it); a saved folder's code files are our shipped ones."""
    import ast

    root = Path(__file__).resolve().parents[1]
    bad = []
    for path in [p for d in ("minimind_hf", "recipes", "convert", "benchmarks") for p in (root / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name == "torch.load" and keywords.get("weights_only") != "True":
                bad.append(f"{path.relative_to(root)}:{node.lineno}: torch.load without weights_only=True")
            if name.startswith(("pickle.", "cPickle.", "dill.")) and name.endswith(("load", "loads")):
                bad.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
            if keywords.get("trust_remote_code") == "True":
                bad.append(f"{path.relative_to(root)}:{node.lineno}: trust_remote_code=True")
    assert not bad, bad
    MiniMindForCausalLM(tiny_config()).save_pretrained(tmp_path)
    shipped = sorted(p.name for p in tmp_path.glob("*.py"))
    assert shipped == ["configuration_minimind.py", "modeling_minimind.py"]
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (root / "minimind_hf" / name).read_bytes(), name
