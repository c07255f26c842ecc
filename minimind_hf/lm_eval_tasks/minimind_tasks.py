"""Datasets and scoring for the lm-eval tasks in this folder, built from the embedded curriculum's held-out files
(nothing is downloaded: the curriculum is generated on first use). The curriculum seed is lm-eval's task metadata:
`--metadata '{"seed": 1}'` (default 0).

- `minimind_cloze`: multiple choice; a pretraining-style statement cut before its value, the value against three
  others of the same relation and language (acc, acc_norm). For base models.
- `minimind_faq`: the held-out chat questions as the pretraining corpus's Q/A pages write them, generated until the
  end of the line and scored with `minimind_hf.evaluation` (exact match). For base models.
- `minimind_qa`: the same questions and the arithmetic ones as chat turns; run with `--apply_chat_template`. For chat
  models.
- `minimind_text`: bits per byte, byte and word perplexity of the held-out pretraining text (rolling log-likelihood).

Raw-text prompts start with the BOS token's text, as the curriculum's evaluations and pretraining samples do.
"""

from __future__ import annotations

import random

import datasets

from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.evaluation import faq_probe_records, load_eval_records, load_texts, score

CHOICES = 4
KEEP = ("answer", "task", "split", "lang", "kind", "relation")


def _seed(metadata: dict) -> int:
    return int(metadata.get("seed", 0))


def _bos() -> str:
    from minimind_hf.tokenization import load_tokenizer

    return load_tokenizer().bos_token


def cloze(**metadata) -> dict[str, datasets.Dataset]:
    """Every cloze record of the pretraining eval file with `choices` (the answer and `CHOICES - 1` values of the same
    kind, relation and language drawn from the file's other answers, in a seeded order) and the `label` index."""
    records = load_eval_records(ensure_curriculum(seed=_seed(metadata))["pretrain"]["eval"])
    pools: dict[tuple, list[str]] = {}
    for record in records:
        pool = pools.setdefault((record["kind"], record["relation"], record["lang"]), [])
        if record["answer"] not in pool:
            pool.append(record["answer"])
    rng = random.Random(f"minimind-lm-eval-cloze-{_seed(metadata)}")
    bos, rows = _bos(), []
    for record in records:
        others = [v for v in pools[(record["kind"], record["relation"], record["lang"])] if v != record["answer"]]
        if len(others) < CHOICES - 1:
            continue
        values = [record["answer"], *rng.sample(others, CHOICES - 1)]
        rng.shuffle(values)
        glue = " " if record["lang"] == "en" else ""
        rows.append(
            {
                "context": bos + record["prompt"],
                "choices": [glue + value for value in values],
                "label": values.index(record["answer"]),
                **{key: record[key] for key in KEEP},
            }
        )
    return {"test": datasets.Dataset.from_list(rows)}


def _qa_rows(metadata: dict) -> list[dict]:
    records = load_eval_records(ensure_curriculum(seed=_seed(metadata))["sft"]["eval"])
    return [r for r in records if len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user"]


def faq(**metadata) -> dict[str, datasets.Dataset]:
    """The single-question QA records as Q/A-page prompts (`minimind_hf.evaluation.faq_probe_records`)."""
    bos = _bos()
    rows = [
        {"context": bos + r["prompt"], **{key: r[key] for key in KEEP if key in r}}
        for r in faq_probe_records(_qa_rows(metadata))
    ]
    return {"test": datasets.Dataset.from_list(rows)}


def qa(**metadata) -> dict[str, datasets.Dataset]:
    """The single-turn held-out chat questions (world facts and arithmetic), the user turn in `question`."""
    rows = [
        {"question": r["prompt"][0]["content"], **{key: r[key] for key in KEEP if key in r}}
        for r in _qa_rows(metadata)
    ]
    return {"test": datasets.Dataset.from_list(rows)}


def text(**metadata) -> dict[str, datasets.Dataset]:
    """The held-out pretraining documents (`pretrain/heldout.jsonl`)."""
    texts = load_texts(ensure_curriculum(seed=_seed(metadata))["pretrain"]["heldout"])
    return {"test": datasets.Dataset.from_list([{"text": t} for t in texts])}


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match by the curriculum's scorer for the record's task."""
    return {"exact_match": score(doc, results[0])}


def process_text(doc: dict, results: list[float]) -> dict[str, tuple]:
    (loglikelihood,) = results
    words, n_bytes = len(doc["text"].split()), len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
