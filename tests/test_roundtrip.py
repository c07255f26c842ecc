"""Save/load round trips: registered Auto classes, Hub remote code without minimind_hf installed, upstream's
published HF folder layout and upstream's raw `.pth` state dicts."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from minimind_hf import MiniMindConfig, MiniMindForCausalLM, MiniMindForSequenceClassification, MiniMindModel
from minimind_hf.converters import ConversionError
from minimind_hf.converters.upstream import convert_upstream_pth
from minimind_hf.tokenization import load_tokenizer
from tests.utils import tiny_model

SEQ = torch.randint(3, 6400, (2, 11), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(SEQ).logits


def assert_same_model(loaded, original):
    """Weights bit-identical; logits equal up to 1e-6, because safetensors' memory-mapped tensors can sit at another
    64-byte alignment, which changes the CPU's SIMD path (about 6e-8; bit-identical once the tensors are cloned)."""
    original_state = original.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original_state[name]), name
    torch.testing.assert_close(logits(loaded), logits(original), atol=1e-6, rtol=0)


def test_registered_save_and_auto_load_is_exact(tmp_path, variant):
    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors", "configuration_minimind.py", "modeling_minimind.py"):
        assert (tmp_path / name).exists(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "minimind"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_minimind.MiniMindConfig",
        "AutoModel": "modeling_minimind.MiniMindModel",
        "AutoModelForCausalLM": "modeling_minimind.MiniMindForCausalLM",
        "AutoModelForSequenceClassification": "modeling_minimind.MiniMindForSequenceClassification",
    }
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is MiniMindForCausalLM
    assert_same_model(loaded, model)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MiniMindConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is MiniMindModel
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    assert type(classifier) is MiniMindForSequenceClassification
    torch.testing.assert_close(classifier.model.embed_tokens.weight, model.model.embed_tokens.weight, atol=0, rtol=0)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, torch

    class BlockMiniMind(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "minimind_hf" or name.startswith("minimind_hf."):
                raise ImportError("minimind_hf is deliberately not importable here")

    sys.meta_path.insert(0, BlockMiniMind())
    try:
        import minimind_hf  # noqa: F401
        raise SystemExit("minimind_hf should not be importable")
    except ImportError:
        pass

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    folder, out = sys.argv[1], sys.argv[2]
    seq = torch.load(folder + "/seq.pt")
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    clf = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=1)
    with torch.no_grad():
        result = {"class": type(lm).__name__, "module": type(lm).__module__, "logits": lm(seq).logits,
                  "clf": type(clf).__name__, "scores": clf(seq).logits}
    generated = lm.generate(seq[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    result["generated"] = generated
    torch.save(result, out)
    """
)


@pytest.mark.parametrize("remote_variant", ["dense", "moe_shared"])
def test_remote_code_loads_without_minimind_hf(tmp_path, remote_variant):
    model = tiny_model(remote_variant)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    torch.save(SEQ, folder / "seq.pt")
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    out = tmp_path / "out.pt"
    run = subprocess.run(
        [sys.executable, str(script), str(folder), str(out)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(out)
    assert result["class"] == "MiniMindForCausalLM" and result["module"].startswith("transformers_modules")
    assert result["clf"] == "MiniMindForSequenceClassification" and result["scores"].shape == (2, 1)
    torch.testing.assert_close(result["logits"], logits(model), atol=1e-6, rtol=0)
    expected = model.generate(SEQ[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(result["generated"], expected)


def upstream_config(model_config, generation):
    """config.json as upstream's published folders write it: their field names and their own auto_map."""
    c = model_config
    common = {
        "architectures": ["MiniMindForCausalLM"],
        "auto_map": {
            "AutoConfig": "model_minimind.MiniMindConfig",
            "AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM",
        },
        "model_type": "minimind",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dropout": 0.0,
        "flash_attn": True,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": 1000000.0,
        "vocab_size": c.vocab_size,
        "torch_dtype": "float32",
        "transformers_version": "4.57.1",
    }
    if generation == "minimind2":
        moe = c.num_experts > 0
        return common | {
            "use_moe": moe,
            "num_experts_per_tok": getattr(c, "num_experts_per_tok", 2),
            "n_routed_experts": c.num_experts or 4,
            "n_shared_experts": getattr(c, "num_shared_experts", 1),
            "scoring_func": "softmax",
            "aux_loss_alpha": getattr(c, "router_aux_loss_coef", 0.1),
            "seq_aux": True,
            "norm_topk_prob": True,
        }
    return common | {
        "use_moe": c.num_experts > 0,
        "head_dim": c.head_dim,
        "tie_word_embeddings": True,
        "inference_rope_scaling": False,
        "rope_scaling": None,
        "num_experts": c.num_experts or 4,
        "num_experts_per_tok": getattr(c, "num_experts_per_tok", 1),
        "moe_intermediate_size": getattr(c, "moe_intermediate_size", c.intermediate_size),
        "norm_topk_prob": True,
        "router_aux_loss_coef": getattr(c, "router_aux_loss_coef", 5e-4),
    }


@pytest.mark.parametrize(
    "upstream_variant, generation",
    [("dense", "minimind2"), ("moe_shared", "minimind2"), ("qk_norm", "minimind3"), ("moe_top1", "minimind3")],
)
def test_upstream_published_folder_loads_into_our_class(tmp_path, upstream_variant, generation):
    # MiniMind2 configs carry no head_dim (always hidden / heads) and its experts have the dense width: give the tiny
    # model a shape that MiniMind2's config can express.
    if generation == "minimind2":
        model = tiny_model(upstream_variant, hidden_size=128, moe_intermediate_size=128)
    else:
        model = tiny_model(upstream_variant)
    (tmp_path / "config.json").write_text(json.dumps(upstream_config(model.config, generation), indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is MiniMindForCausalLM
    assert loaded.config.use_qk_norm == (generation == "minimind3")
    assert loaded.config.num_experts == model.config.num_experts
    assert_same_model(loaded, model)


def upstream_state_dict_keys(config):
    """The key set of an upstream `.pth`, spelled out from upstream MiniMind's checkpoint layout."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}"
        keys |= {f"{p}.self_attn.{x}_proj.weight" for x in "qkvo"}
        keys |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
        if config.use_qk_norm:
            keys |= {f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"}
        if config.num_experts:
            keys.add(f"{p}.mlp.gate.weight")
            for e in range(config.num_experts):
                keys |= {f"{p}.mlp.experts.{e}.{x}_proj.weight" for x in ("gate", "up", "down")}
            for e in range(config.num_shared_experts):
                keys |= {f"{p}.mlp.shared_experts.{e}.{x}_proj.weight" for x in ("gate", "up", "down")}
        else:
            keys |= {f"{p}.mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
    return keys


def test_upstream_pth_state_dict_loads_strictly(tmp_path, variant):
    source = tiny_model(variant)
    assert set(source.state_dict()) == upstream_state_dict_keys(source.config)
    # Upstream saves fp16 tensors with `torch.save(model.state_dict())`.
    torch.save({k: v.half() for k, v in source.state_dict().items()}, tmp_path / "full_sft_64.pth")
    state = torch.load(tmp_path / "full_sft_64.pth", map_location="cpu", weights_only=True)
    target = MiniMindForCausalLM(source.config).eval()
    target.load_state_dict(state, strict=True)
    assert target.lm_head.weight.data_ptr() == target.model.embed_tokens.weight.data_ptr()
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name].half().float()), name
    # RoPE tables are not in the checkpoint: they stay float32-exact rather than fp16-rounded.
    torch.testing.assert_close(target.model.rotary_emb.inv_freq, source.model.rotary_emb.inv_freq, atol=0, rtol=0)
    torch.testing.assert_close(logits(target), logits(source), atol=2e-3, rtol=0)  # fp16 weight rounding only


def test_a_renamed_key_stops_the_conversion_naming_both_tensors(tmp_path):
    """Our converter's check, not torch's strict load: a renamed tensor is reported as missing under its real name
    and unexpected under the other, before anything is written."""
    source = tiny_model()
    state = {k: v.half() for k, v in source.state_dict().items()}
    state["model.layers.1.mlp.gate_proj.weight_renamed"] = state.pop("model.layers.1.mlp.gate_proj.weight")
    torch.save(state, tmp_path / "renamed.pth")
    tokenizer = load_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConversionError) as error:
        convert_upstream_pth(
            tmp_path / "renamed.pth", tmp_path / "out", tokenizer=tmp_path / "tok", num_attention_heads=4
        )
    assert "missing tensor model.layers.1.mlp.gate_proj.weight" in str(error.value)
    assert "unexpected tensor model.layers.1.mlp.gate_proj.weight_renamed" in str(error.value)
    assert not (tmp_path / "out").exists()
