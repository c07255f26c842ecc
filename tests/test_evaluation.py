"""Bits per byte and perplexity on held-out text (`minimind_hf.evaluation.language_model_scores`), checked against a
token-by-token reference computed here, its CLI, and the readers' errors."""

import json
import math

import pytest
import torch

from minimind_hf.curriculum import write_curriculum
from minimind_hf.data import DataValidationError
from minimind_hf.evaluation import language_model_scores, load_texts, main
from minimind_hf.tokenization import load_tokenizer
from tests.utils import briefly_trained, tiny_model

TEXTS = [
    "The capital of Kataland is Rakuno. It rains there in spring.",
    "小明住在北京，他最喜欢的颜色是红色。",
    "3 + 4 = 7\n5 x 6 = 30",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return briefly_trained(tiny_model("dense", vocab_size=len(tokenizer))).eval()


def reference_nll(model, ids: list[int], context: int) -> float:
    """Each token after the first predicted from at most `context - 1` tokens before it, one forward per token."""
    total = 0.0
    with torch.no_grad():
        for j in range(1, len(ids)):
            window = torch.tensor([ids[max(0, j - context + 1) : j]])
            logprobs = torch.log_softmax(model(input_ids=window).logits[0, -1].float(), -1)
            total -= logprobs[ids[j]].item()
    return total


def test_scores_match_a_token_by_token_reference(model, tokenizer):
    scores = language_model_scores(model, tokenizer, TEXTS, batch_size=2)
    docs = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in TEXTS]
    nll = sum(reference_nll(model, ids, 10**6) for ids in docs)
    tokens = sum(len(ids) - 1 for ids in docs)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert scores["tokens"] == tokens and scores["bytes"] == n_bytes and scores["documents"] == 3
    assert scores["bytes"] > len("".join(TEXTS))  # the Chinese characters are 3 bytes each
    assert scores["nll"] == pytest.approx(nll, rel=1e-4)
    assert scores["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert scores["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)
    assert scores["bits_per_token"] == pytest.approx(nll / tokens / math.log(2), rel=1e-4)


def test_sliding_windows_give_each_token_its_window_of_context(model, tokenizer):
    """With stride 1 every token past the first window sees exactly the `context_length - 1` tokens before it."""
    text = TEXTS[0] * 3
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    scores = language_model_scores(model, tokenizer, [text], context_length=12, stride=1, batch_size=7)
    assert scores["nll"] == pytest.approx(reference_nll(model, ids, 12), rel=1e-4)
    # a longer stride predicts every token exactly once too: same token count, a different (less context) total
    strided = language_model_scores(model, tokenizer, [text], context_length=12, stride=12)
    assert strided["tokens"] == scores["tokens"] == len(ids) - 1
    assert strided["nll"] != pytest.approx(scores["nll"], rel=1e-4)


def test_padding_and_batching_do_not_change_the_scores(model, tokenizer):
    one = language_model_scores(model, tokenizer, TEXTS, batch_size=1)
    batched = language_model_scores(model, tokenizer, TEXTS, batch_size=8)
    assert batched["nll"] == pytest.approx(one["nll"], rel=1e-5)


def test_training_lowers_bits_per_byte_on_text_it_learnt(tokenizer):
    """The measure moves the right way: a model that has fit a text compresses it better than before."""
    model = tiny_model("dense", vocab_size=len(tokenizer)).train()
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]]])
    before = language_model_scores(model.eval(), tokenizer, TEXTS[:1])["bits_per_byte"]
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad()
    after = language_model_scores(model.eval(), tokenizer, TEXTS[:1])["bits_per_byte"]
    assert after < before / 4, (before, after)


def test_bad_settings_and_bad_files_stop_with_one_clear_error(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="stride must be in 1..context_length"):
        language_model_scores(model, tokenizer, TEXTS, context_length=8, stride=9)
    path = tmp_path / "texts.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=rf"{path}:2: text: missing"):
        load_texts(path)
    path.write_text(json.dumps({"text": "fine"}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=rf"{path}:2: \(json\): broken JSON line"):
        load_texts(path)
    plain = tmp_path / "book.txt"
    plain.write_text("one document\nof two lines", encoding="utf-8")
    assert load_texts(plain) == ["one document\nof two lines"]


def test_curriculum_heldout_text_is_never_a_training_document(tmp_path):
    paths = write_curriculum(tmp_path / "curriculum", seed=0)
    heldout = load_texts(paths["pretrain"]["heldout"])
    train = set(load_texts(paths["pretrain"]["train"]))
    assert len(heldout) > 400 and not train & set(heldout)


def test_cli_scores_a_saved_model_on_text_and_an_eval_file(model, tokenizer, tmp_path, capsys):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "texts.jsonl"
    text.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    records = tmp_path / "eval.jsonl"
    records.write_text(
        json.dumps(
            {"text": "The passkey is 12345. The passkey is", "answer": "12345", "task": "passkey", "split": "x1"}
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "result.json"
    result = main(["--model", str(folder), "--text", str(text), "--eval", str(records), "--output", str(out)])
    assert json.loads(out.read_text(encoding="utf-8")) == result
    assert result["bits_per_byte"] == pytest.approx(language_model_scores(model, tokenizer, TEXTS)["bits_per_byte"])
    assert set(result["eval"]["accuracy"]) == {"all", "x1"}
    assert "bits per byte" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", str(folder), "--text", str(text), "--eval", "no_such_stage"])
