"""Did a recipe train the objective it claims? Scored independently of the recipe: next-token cross-entropy computed
here by hand (shift, log-softmax, gather) on target tokens chosen here, against the entropy of those targets' own
token frequencies, which is the lowest loss any model that ignores context can reach on them. A "loss falls" check
passes for a model that only learned which tokens are common; beating the unigram entropy needs the context."""

import json
import math
import re
from collections import Counter

import torch


def next_token_ce(model, rows: list[list[int]], targets: list[list[bool]]) -> float:
    """Mean cross-entropy (nats) of predicting token t of each row from tokens < t, over the positions t where
    `targets` is true (t >= 1)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row, keep in zip(rows, targets):
            ids = torch.tensor([row])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
            mask = torch.tensor(keep[1:])
            total -= picked[mask].sum().item()
            count += int(mask.sum())
    return total / count


def unigram_entropy(rows: list[list[int]], targets: list[list[bool]]) -> float:
    """Entropy (nats) of the empirical distribution of the target tokens (positions t >= 1 where `targets` is true)."""
    counts = Counter(token for row, keep in zip(rows, targets) for token, k in zip(row[1:], keep[1:]) if k)
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def assistant_token_mask(row: list[int], tokenizer) -> list[bool]:
    """Tokens of every assistant turn's content and its `<|im_end|>` and newline, found from the text and the
    tokenizer's offsets (independently of the chat template's generation markers)."""
    text = tokenizer.decode(row)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == row
    spans = [m.span(1) for m in re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>\n?)", text, re.S)]
    return [any(a <= start < b for a, b in spans) for start, _ in encoded["offset_mapping"]]


def dialogue_rows(path, tokenizer) -> tuple[list[list[int]], list[list[bool]]]:
    """Each `conversations` record of a JSONL file rendered by the chat template, and its assistant-token mask."""
    rows = []
    for line in open(path, encoding="utf-8"):
        rows.append(tokenizer.apply_chat_template(json.loads(line)["conversations"], tokenize=True, return_dict=False))
    return rows, [assistant_token_mask(row, tokenizer) for row in rows]


def recording_batches(monkeypatch, trainer_class) -> list:
    """Record (input_ids, labels) of every batch `trainer_class.compute_loss` sees."""
    seen = []
    compute_loss = trainer_class.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        seen.append((inputs["input_ids"].tolist(), inputs["labels"].tolist()))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer_class, "compute_loss", recording)
    return seen


def assert_labels_on_assistant_tokens(seen) -> None:
    """Every trained batch carries labels exactly on the assistant tokens (found here from the text, independently
    of the chat template's generation markers), equal to the tokens themselves."""
    assert seen
    from minimind_hf.tokenization import load_tokenizer

    tokenizer = load_tokenizer()
    for ids, labels in seen:
        for row, row_labels in zip(ids, labels):
            expected = assistant_token_mask(row, tokenizer)
            assert [label != -100 for label in row_labels] == expected
            assert all(label == token for label, token, keep in zip(row_labels, row, expected) if keep)
