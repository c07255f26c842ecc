"""The YaRN long-context benchmark on a tiny random model: YaRN reaches the rotary module, sequences and perplexity are
computed as documented, passkey scoring is wired right, and `main` writes a complete JSON and a PNG. No quality
assertions (the model is random)."""

import json
import math
from pathlib import Path

import pytest
import torch

from minimind_hf import MiniMindForCausalLM
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.evaluation import load_texts
from minimind_hf.tokenization import load_tokenizer
from tests.utils import load_script, tiny_config

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "yarn_context.py"
TRAINED = 32


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("yarn") / "model"
    torch.manual_seed(0)
    MiniMindForCausalLM(tiny_config(max_position_embeddings=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def texts(bench):

    return load_texts(ensure_curriculum(seed=0)["pretrain"]["heldout"])[:40]


def test_yarn_reaches_the_rotary_module(bench, model_dir):
    plain = bench.load_variant(model_dir, None, TRAINED, 8 * TRAINED)
    yarn = bench.load_variant(model_dir, 4, TRAINED, 8 * TRAINED)
    assert plain.config.max_position_embeddings == yarn.config.max_position_embeddings == 8 * TRAINED
    assert plain.config.rope_parameters["rope_type"] == "default"
    assert yarn.config.rope_parameters == {
        "rope_type": "yarn",
        "rope_theta": plain.config.rope_parameters["rope_theta"],
        "factor": 4.0,
        "original_max_position_embeddings": TRAINED,
    }
    p, y = plain.model.rotary_emb, yarn.model.rotary_emb
    assert p.attention_scaling == 1.0
    assert y.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)  # transformers' default mscale
    # YaRN keeps the fastest dimensions and interpolates the slowest by the factor.
    assert y.inv_freq[0] == pytest.approx(p.inv_freq[0].item())
    assert y.inv_freq[-1] == pytest.approx(p.inv_freq[-1].item() / 4, rel=1e-5)
    assert not torch.allclose(y.inv_freq, p.inv_freq)
    # Extras go through, and the forward pass differs (same weights, different positions).
    upstream = bench.load_variant(model_dir, 4, TRAINED, 8 * TRAINED, attention_factor=1.0, beta_fast=None)
    assert upstream.model.rotary_emb.attention_scaling == 1.0 and "beta_fast" not in upstream.config.rope_parameters
    ids = torch.arange(3, 3 + 2 * TRAINED).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, yarn(ids).logits, atol=1e-4)
    torch.testing.assert_close(plain.lm_head.weight, yarn.lm_head.weight)


def test_sequences_are_bos_documents_eos(bench, tokenizer, texts):
    rows = bench.build_sequences(tokenizer, texts, 48, 3)
    assert rows.shape == (3, 48) and rows.dtype == torch.long
    assert (rows[:, 0] == tokenizer.bos_token_id).all()
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    cursor = 0
    for row in rows.tolist():  # each row: BOS, then whole documents from the next unused one, cut at the length
        expected = [tokenizer.bos_token_id]
        while len(expected) < 48:
            expected += docs[cursor]
            cursor += 1
        assert row == expected[:48]
    assert not torch.equal(rows[0], rows[1])
    # Too few texts: they are reused in order.
    cycled = bench.build_sequences(tokenizer, texts[:1], 3 * len(docs[0]) + 1, 1)[0].tolist()
    assert cycled == [tokenizer.bos_token_id, *docs[0] * 3]


def test_perplexity_matches_the_model_loss(bench, model_dir, tokenizer, texts):
    model = bench.load_variant(model_dir, None, TRAINED, 8 * TRAINED)
    rows = bench.build_sequences(tokenizer, texts, 2 * TRAINED, 3)
    result = bench.perplexity(model, rows, TRAINED, batch_size=2)
    with torch.no_grad():
        loss = model(input_ids=rows, labels=rows).loss.item()
    assert result["ppl"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert result["targets"] == 3 * (2 * TRAINED - 1)
    nll = bench.token_nll(model, rows, batch_size=3)
    assert result["tail"] == pytest.approx(math.exp(nll[:, -TRAINED:].mean().item()), rel=1e-5)
    # At the trained length the tail is every predicted position.
    short = bench.perplexity(model, rows[:, :TRAINED], TRAINED)
    assert short["tail"] == pytest.approx(short["ppl"])


def test_passkey_scoring(bench, tokenizer):
    records = bench.passkey_records(seed=0, limit=2)
    assert sorted(r["split"] for r in records) == ["x1", "x1", "x2", "x2", "x4", "x4", "x8", "x8"]
    right = bench.passkey_accuracy(records, lambda rs: [f" {r['answer']}. Remember it." for r in rs])
    wrong = bench.passkey_accuracy(records, lambda rs: [" 00000." for r in rs])
    assert right == {"all": 1.0, "x1": 1.0, "x2": 1.0, "x4": 1.0, "x8": 1.0}
    assert set(wrong.values()) == {0.0}
    tokens = bench.split_means(records, bench.prompt_lengths(tokenizer, records))
    assert tokens["x1"] < tokens["x2"] < tokens["x4"] < tokens["x8"]


def test_main_writes_every_variant_length_and_split(bench, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--output_dir", str(out), "--limit", "1", "--sequences", "2"]
    argv += ["--trained_length", str(TRAINED), "--multiples", "1", "2", "--factors", "4", "--threads", "1"]
    bench.main(argv)
    results = json.loads((out / "yarn_context.json").read_text())
    assert (out / "yarn_context.png").stat().st_size > 1000
    assert not list(out.glob("*.tmp"))
    assert results["threads"] == 1 and results["lengths"] == [TRAINED, 2 * TRAINED]
    assert results["splits"] == ["x1", "x2", "x4", "x8"]
    assert list(results["variants"]) == ["plain", "yarn-4"]
    for variant in results["variants"].values():
        for split in results["splits"]:
            assert 0.0 <= variant["passkey"][split] <= 1.0
        for length in results["lengths"]:
            ppl = variant["perplexity"][str(length)]
            # A random model over a 6400-token vocabulary: near-uniform, never better than a few hundred.
            assert 100 < ppl["ppl"] < 20000 and 100 < ppl["tail"] < 20000
            assert ppl["targets"] == 2 * (length - 1)
    assert results["variants"]["yarn-4"]["attention_scaling"] > 1.0
    assert results["variants"]["plain"]["attention_scaling"] == 1.0
    assert results["variants"]["yarn-4"]["max_position_embeddings"] >= 8 * TRAINED
    assert results["prompt_tokens"]["x8"] > results["prompt_tokens"]["x1"]
    table = capsys.readouterr().out
    assert "| plain |" in table and "| yarn-4 |" in table and f"tail ppl@{2 * TRAINED}" in table


def test_missing_model_says_run_the_quickstart(bench, tmp_path):
    with pytest.raises(SystemExit) as raised:
        bench.main(["--model", str(tmp_path / "nope")])
    assert "quickstart" in str(raised.value)
