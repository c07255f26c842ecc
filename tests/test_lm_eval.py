"""The lm-eval tasks shipped in minimind_hf/lm_eval_tasks run offline through EleutherAI's harness
(`lm_eval.simple_evaluate` with a model object), and the harness, an independent implementation, agrees with this
project's own measures: bits per byte with `language_model_scores`, chat exact match with the curriculum's
`evaluate`, multiple-choice accuracy with a log-likelihood argmax computed here."""

from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from minimind_hf.curriculum import ensure_curriculum  # noqa: E402
from minimind_hf.evaluation import (  # noqa: E402
    evaluate,
    language_model_scores,
    load_eval_records,
    load_texts,
    make_generate_fn,
)
from minimind_hf.tokenization import load_tokenizer  # noqa: E402
from tests.utils import briefly_trained, memorised_replies, tiny_model  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "minimind_hf" / "lm_eval_tasks"
LIMIT = 8


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(TASKS))


def run(model, tokenizer, task_manager, task: str, **kwargs) -> dict:
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=LIMIT, **kwargs)
    return results["results"][task]


def task_docs(task_manager, task: str, **metadata) -> list[dict]:
    if metadata:  # the curriculum seed, as `lm_eval --metadata '{"seed": 1}'` passes it
        task_manager = TaskManager(include_path=str(TASKS), metadata=metadata)
    return list(task_manager.load([task])["tasks"][task].test_docs())


def test_every_task_is_found_and_reads_the_curriculum(task_manager):
    assert {"minimind_cloze", "minimind_faq", "minimind_qa", "minimind_text"} <= set(task_manager.all_tasks)
    paths = ensure_curriculum(seed=0)
    assert len(task_docs(task_manager, "minimind_text")) == len(load_texts(paths["pretrain"]["heldout"]))
    single = [r for r in load_eval_records(paths["sft"]["eval"]) if len(r["prompt"]) == 1]
    qa = task_docs(task_manager, "minimind_qa")
    assert [d["question"] for d in qa] == [r["prompt"][0]["content"] for r in single]
    faq = task_docs(task_manager, "minimind_faq")
    assert faq and all(d["context"].startswith("<|im_start|>") and d["task"] == "faq" for d in faq)
    cloze = task_docs(task_manager, "minimind_cloze")
    cloze_records = load_eval_records(paths["pretrain"]["eval"])
    assert len(cloze) > 0.9 * len(cloze_records)
    for doc in cloze:
        glue = " " if doc["lang"] == "en" else ""
        assert len(set(doc["choices"])) == 4 and doc["choices"][doc["label"]] == glue + doc["answer"]
    # the curriculum seed is task metadata: another seed, another world
    other = task_docs(task_manager, "minimind_qa", seed=1)
    assert [d["question"] for d in other] != [d["question"] for d in qa]


def test_bits_per_byte_agrees_with_language_model_scores(tokenizer, task_manager):
    model = briefly_trained(tiny_model("dense", vocab_size=len(tokenizer))).eval()
    harness = run(model, tokenizer, task_manager, "minimind_text")
    texts = load_texts(ensure_curriculum(seed=0)["pretrain"]["heldout"])[:LIMIT]
    ours = language_model_scores(model, tokenizer, texts)
    assert harness["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=1e-4)
    assert harness["byte_perplexity,none"] == pytest.approx(2 ** ours["bits_per_byte"], rel=1e-4)


def test_chat_exact_match_agrees_with_the_curriculum_scorer(tokenizer, task_manager):
    """A model taught the answers to half of the first questions: both harnesses score the same completions alike."""
    records = [r for r in load_eval_records(ensure_curriculum(seed=0)["sft"]["eval"]) if len(r["prompt"]) == 1]
    records = records[:LIMIT]
    taught = [
        (tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False), r["answer"])
        for r in records[::2]
    ]
    model = memorised_replies(tokenizer, taught)
    harness = run(model, tokenizer, task_manager, "minimind_qa", apply_chat_template=True)
    ours = evaluate(records, make_generate_fn(model, tokenizer, max_new_tokens=32))["all"]
    assert harness["exact_match,none"] == pytest.approx(ours)
    assert 0.25 <= ours <= 0.75  # the taught half right, not all or none


def test_cloze_accuracy_is_the_log_likelihood_argmax(tokenizer, task_manager):
    model = briefly_trained(tiny_model("dense", vocab_size=len(tokenizer))).eval()
    harness = run(model, tokenizer, task_manager, "minimind_cloze")
    right = 0
    for doc in task_docs(task_manager, "minimind_cloze")[:LIMIT]:
        context = tokenizer(doc["context"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            ids = tokenizer(doc["context"] + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    assert harness["acc,none"] == pytest.approx(right / LIMIT)
