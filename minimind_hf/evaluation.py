"""Held-out evaluation in one place: the scorers for the curriculum's evaluation files, and bits per byte and
perplexity on held-out text ([`language_model_scores`]).

    python -m minimind_hf.evaluation --model outputs/quickstart/pretrain            # the curriculum's held-out text
    python -m minimind_hf.evaluation --model outputs/quickstart/sft --text my.jsonl --eval sft  # any text; QA accuracy

Scoring rules (all strings are normalised first: Unicode NFKC, case-folded, whitespace collapsed, punctuation
stripped from both ends; `<think>` blocks are dropped and an `<answer>` block, when present, replaces the text):

- `qa`, `arith`, `tool_answer`, `rl` (short answers): 1 if the expected answer is the whole completion or its final
  span. Final span means the completion ends with the answer and the character before it is a boundary: for an
  answer starting with a Latin letter or a digit that character must not be a letter or digit (nor `.`, `-`, `,`
  before a number, so "-7" or "2.5" never pass for "7" or "5"); Chinese answers need no boundary (the world's
  Chinese values are never suffixes of one another). Several expected answers (`gt`) pass if any passes.
- `cloze`, `passkey` (raw-text continuation): the continuation up to its first sentence end must equal the answer.
- `faq` (a base model continuing a raw-text `Q: ... / A:` page, [`faq_probe_records`]): the first line of the
  continuation is scored as a short answer.
- `reasoning`: the `<answer>` block must exist and equal the expected answer.
- `identity`: the completion contains the expected name or maker and none of the `forbidden` strings.
- `tool_call`: the first `<tool_call>` holds JSON whose name equals the expected tool and whose arguments equal the
  expected ones (strings compared normalised, numbers by value).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch

from .curriculum.templates import FAQ
from .data import conversation_to_messages, dpo_record_to_columns, iter_rows

_EDGE_PUNCT = ".,!?;:'\"()[]{}<>。，！？；：、“”‘’（）【】《》…「」"
_NUMBER_GLUE = set("0123456789.-,")
_SENTENCE_END = re.compile(r"[。！？\n]|[.!?](?=\s|$)")
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


def normalize(text: str) -> str:
    """NFKC, case-fold, collapse whitespace and strip punctuation from both ends."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = " ".join(text.split())
    return text.strip(_EDGE_PUNCT + " ")


def extract_answer(completion: str) -> str:
    """The part of a completion that is scored: text before `<|im_end|>`, the `<answer>` block if any, otherwise the
    text after the last think block."""
    completion = completion.split("<|im_end|>")[0]
    answers = _ANSWER.findall(completion)
    if answers:
        return answers[-1][0]
    if "</think>" in completion:
        return completion.rsplit("</think>", 1)[1]
    return _THINK.sub("", completion)


def final_span_match(completion: str, answer: str) -> bool:
    """The short-answer rule: the normalised answer is the whole normalised completion or its final span."""
    text, expected = normalize(completion), normalize(answer)
    if not expected or not text.endswith(expected):
        return False
    if len(text) == len(expected):
        return True
    before = text[-len(expected) - 1]
    head = expected[0]
    if head.isdigit() or head == "-":
        return before not in _NUMBER_GLUE
    if head.isascii() and head.isalnum():
        return not (before.isascii() and before.isalnum())
    return True


def score_short_answer(record: dict, completion: str) -> float:
    expected = record.get("gt") or [record["answer"]]
    text = extract_answer(completion)
    return float(any(final_span_match(text, str(answer)) for answer in expected))


def score_continuation(record: dict, completion: str) -> float:
    first = _SENTENCE_END.split(completion.split("<|im_end|>")[0], maxsplit=1)[0]
    return float(normalize(first) == normalize(record["answer"]) != "")


def score_faq(record: dict, completion: str) -> float:
    return score_short_answer(record, completion.split("\n")[0])  # extract_answer stops at <|im_end|>


def score_reasoning(record: dict, completion: str) -> float:
    answers = _ANSWER.findall(completion.split("<|im_end|>")[0])
    return float(bool(answers) and normalize(answers[-1][0]) == normalize(record["answer"]))


def score_identity(record: dict, completion: str) -> float:
    text = normalize(completion)
    if any(normalize(bad) in text for bad in record.get("forbidden", [])):
        return 0.0
    return float(normalize(record["answer"]) in text)


def _same_value(got, want) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want
    if isinstance(want, int | float):
        try:
            return math.isclose(float(got), float(want), rel_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return isinstance(got, str) and normalize(got) == normalize(str(want))


def parse_tool_calls(completion: str) -> list[dict]:
    """Every well-formed `<tool_call>` JSON object in a completion, as `{"name": ..., "arguments": {...}}`."""
    calls = []
    for body, _ in _TOOL_CALL.findall(completion):
        try:
            call = json.loads(body.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    continue
            if isinstance(arguments, dict):
                calls.append({"name": call["name"], "arguments": arguments})
    return calls


def score_tool_call(record: dict, completion: str) -> float:
    calls = parse_tool_calls(completion.split("<|im_end|>")[0])
    if not calls:
        return 0.0
    got, want = calls[0], record["tool_call"]
    if got["name"] != want["name"] or set(got["arguments"]) != set(want["arguments"]):
        return 0.0
    return float(all(_same_value(got["arguments"][k], v) for k, v in want["arguments"].items()))


SCORERS: dict[str, Callable[[dict, str], float]] = {
    "qa": score_short_answer,
    "arith": score_short_answer,
    "tool_answer": score_short_answer,
    "rl": score_short_answer,
    "cloze": score_continuation,
    "passkey": score_continuation,
    "faq": score_faq,
    "reasoning": score_reasoning,
    "identity": score_identity,
    "tool_call": score_tool_call,
}


def score(record: dict, completion: str) -> float:
    """Scores one completion against one evaluation record with the scorer of `record["task"]` (1.0 or 0.0)."""
    return SCORERS[record["task"]](record, completion)


def load_eval_records(path: str | Path) -> list[dict]:
    """Reads a curriculum evaluation file into generation-ready records.

    Chat records get `prompt` (TRL-style messages up to, not including, the expected assistant turn) and `tools`
    (list of JSON schemas or `None`); raw-text records (`cloze`, `passkey`) get `prompt` as a string. All other keys
    (`answer`, `gt`, `task`, `split`, `lang`, ...) are kept. Preference records (DPO) are returned unchanged.
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if "chosen" in record:
                records.append(record)
                continue
            if "text" in record:
                record["prompt"] = record.pop("text")
                records.append(record)
                continue
            messages, tools = conversation_to_messages(record.pop("conversations"))
            if messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            record["prompt"], record["tools"] = messages, json.loads(tools) if tools else None
            records.append(record)
    return records


def faq_probe_records(records: Iterable[dict]) -> list[dict]:
    """The single-question chat QA records (`task` `qa`) as the pretraining corpus's question-answer pages write them
    (`Q: <question>\nA:`, `问：<question>\n答：`), for a base model to continue (`task` `faq`): what a pretrained
    model can answer before SFT, in the format it was pretrained on. Set against chat QA after SFT, it tells knowledge
    that pretraining did not make answerable from knowledge that SFT lost."""
    probes = []
    for record in records:
        prompt = record.get("prompt")
        if record.get("task") != "qa" or not isinstance(prompt, list) or len(prompt) != 1:
            continue
        question, reply = FAQ[record["lang"]]
        text = f"{question}{prompt[0]['content']}\n{reply}".rstrip(" ")  # the page's space belongs to the answer
        probes.append({**record, "prompt": text, "task": "faq"})
    return probes


def make_generate_fn(
    model,
    tokenizer,
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    add_bos_to_text: bool = True,
    chat_template_kwargs: dict | None = None,
    sampling: dict | None = None,
) -> Callable[[Sequence[dict]], list[str]]:
    """A batched `model.generate` over evaluation records, greedy unless `sampling` gives sampling settings (e.g.
    `{"temperature": 0.8, "top_p": 1.0}`; seed torch's RNG before calling for reproducible samples).

    Chat prompts go through the tokenizer's chat template with the generation prompt (a record's `tools` may be the
    schema list or its JSON string); raw-text prompts are encoded as is, after the BOS token when `add_bos_to_text`
    (matching upstream's `bos + text + eos` pretraining samples). Prompts are left-padded; the decoded new tokens
    (special tokens skipped) are returned.
    """
    kwargs = chat_template_kwargs or {}
    decoding = {"do_sample": True, **sampling} if sampling else {"do_sample": False}

    def render(record: dict) -> str:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            return (tokenizer.bos_token if add_bos_to_text else "") + prompt
        tools = record.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        return tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs)

    def generate(records: Sequence[dict]) -> list[str]:
        completions = []
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for start in range(0, len(records), batch_size):
                texts = [render(r) for r in records[start : start + batch_size]]
                batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    output = model.generate(
                        **batch,
                        max_new_tokens=max_new_tokens,
                        **decoding,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                    )
                new = output[:, batch["input_ids"].shape[1] :]
                completions += tokenizer.batch_decode(new, skip_special_tokens=True)
        finally:
            tokenizer.padding_side = side
        return completions

    return generate


def score_completions(records: Sequence[dict], completions: Sequence[str]) -> list[float]:
    """[`score`] of each completion against its record."""
    if len(completions) != len(records):
        raise ValueError(f"generate_fn returned {len(completions)} completions for {len(records)} records")
    return [score(record, completion) for record, completion in zip(records, completions)]


def split_means(records: Sequence[dict], values: Sequence[float]) -> dict[str, float]:
    """The mean of `values` per record `split` and over all records with a split (`"all"`)."""
    totals: dict[str, list[float]] = defaultdict(list)
    for record, value in zip(records, values):
        totals[record.get("split", "all")].append(value)
        if record.get("split") is not None:
            totals["all"].append(value)
    return {split: sum(v) / len(v) for split, v in sorted(totals.items())}


def breakdown(records: Sequence[dict], values: Sequence[float]) -> dict[str, dict[str, dict]]:
    """Where a model is right and wrong: per split, the mean and count of `values` per entity kind (`person`), per
    kind and relation (`person.city`) and per language (`lang.en`), read from the records' `kind`, `relation` and
    `lang` keys (records without them count under their split only).

    Returns `{split: {group: {"mean": float, "n": int}}}`, groups sorted.
    """
    totals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record, value in zip(records, values):
        groups = totals[record.get("split", "all")]
        if "kind" in record:
            groups[record["kind"]].append(value)
            if "relation" in record:
                groups[f"{record['kind']}.{record['relation']}"].append(value)
        if "lang" in record:
            groups[f"lang.{record['lang']}"].append(value)
    return {
        split: {g: {"mean": sum(v) / len(v), "n": len(v)} for g, v in sorted(groups.items())}
        for split, groups in sorted(totals.items())
    }


def evaluate_with_breakdown(
    records: Iterable[dict], generate_fn: Callable[[Sequence[dict]], list[str]]
) -> tuple[dict[str, float], dict[str, dict[str, dict]]]:
    """[`evaluate`]'s split means and the [`breakdown`] of the same completions."""
    records = list(records)
    values = score_completions(records, generate_fn(records))
    return split_means(records, values), breakdown(records, values)


def evaluate(records: Iterable[dict], generate_fn: Callable[[Sequence[dict]], list[str]]) -> dict[str, float]:
    """Generates a completion per record and returns the mean score per `split` and over all records (`"all"`)."""
    return evaluate_with_breakdown(records, generate_fn)[0]


def evaluate_model(model, tokenizer, records: str | Path | Iterable[dict], **generate_kwargs) -> dict[str, float]:
    """[`evaluate`] with [`make_generate_fn`]; `records` may be a curriculum evaluation file."""
    if isinstance(records, str | Path):
        records = load_eval_records(records)
    return evaluate(records, make_generate_fn(model, tokenizer, **generate_kwargs))


def preference_margins(model, tokenizer, records: str | Path | Iterable[dict]) -> list[tuple[str, float]]:
    """(split, margin) per preference pair: the summed log-probability of the chosen answer's tokens (its content,
    `<|im_end|>` and newline, after the generation prompt) minus the rejected answer's."""
    if isinstance(records, str | Path):
        records = load_eval_records(records)
    margins = []
    for record in records:
        columns = dpo_record_to_columns(record)
        prompt = tokenizer.apply_chat_template(columns["prompt"], add_generation_prompt=True, tokenize=False)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        scores = []
        for key in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(columns["prompt"] + columns[key], tokenize=False)
            ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]  # [seq - 1]
            scores.append(logprobs[start - 1 :].sum().item())
        margins.append((record.get("split", "all"), scores[0] - scores[1]))
    return margins


def preference_accuracy(model, tokenizer, records: str | Path | Iterable[dict]) -> dict[str, float]:
    """Fraction of preference pairs whose chosen answer has a higher summed log-probability than the rejected one
    ([`preference_margins`] > 0), per `split` and overall (the DPO stage's held-out measure)."""
    totals: dict[str, list[float]] = defaultdict(list)
    for split, margin in preference_margins(model, tokenizer, records):
        totals[split].append(float(margin > 0))
        totals["all"].append(float(margin > 0))
    return {split: sum(values) / len(values) for split, values in sorted(totals.items())}


def load_texts(path: str | os.PathLike) -> list[str]:
    """The documents of a held-out text file: the `text` of each line of a JSONL file, read and checked as pretraining
    data is (a bad line stops with one error naming the file, the line and the field), or a plain-text file as one
    document."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8")]
    return [row["text"] for row in iter_rows(path, "pretrain")]


def _windows(ids: list[int], length: int, stride: int) -> Iterator[tuple[list[int], int]]:
    """(input ids, number of leading positions whose next token is context only) for each window over `ids`: the
    first window scores every token, each later one the `stride` tokens past the previous end with the window's
    other tokens as context."""
    yield ids[:length], 0
    end = length
    while end < len(ids):
        new_end = min(end + stride, len(ids))
        start = new_end - length
        yield ids[start:new_end], end - start - 1
        end = new_end


def language_model_scores(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    add_bos: bool = True,
) -> dict[str, float]:
    """Bits per byte and perplexity of a causal LM on held-out documents.

    Each document is encoded without special tokens, after the BOS token when `add_bos` (upstream's pretraining
    samples are `bos + text + eos`), and every text token is predicted from the ones before it: the negative
    log-likelihood summed over the documents' tokens (EOS not included), divided by their number for perplexity and
    by `ln 2` times their UTF-8 bytes for bits per byte, a measure that does not depend on the tokenizer. A document
    longer than `context_length` (default: the model's `max_position_embeddings`) is scored in sliding windows of
    that length, each new window predicting `stride` tokens (default half the length) with the rest as context.
    lm-eval's `loglikelihood_rolling` tasks compute the same for documents that fit one window.

    Returns:
        `dict`: `documents`, `tokens`, `bytes`, `nll` (nats, summed), `perplexity`, `bits_per_token`,
        `bits_per_byte`.
    """
    length = context_length or model.config.max_position_embeddings
    stride = stride or max(1, length // 2)
    if not 0 < stride <= length:
        raise ValueError(f"stride must be in 1..context_length ({length}), got {stride}")
    windows, tokens, n_bytes = [], 0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if add_bos:
            ids = [tokenizer.bos_token_id, *ids]
        tokens += len(ids) - 1
        n_bytes += len(text.encode("utf-8"))
        windows += list(_windows(ids, length, stride))
    windows.sort(key=lambda window: len(window[0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll = 0.0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            scored = torch.zeros(len(batch), width - 1, dtype=torch.bool)
            for row, (ids, context) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                scored[row, context : len(ids) - 1] = True
            mask = (torch.arange(width)[None] < torch.tensor([len(ids) for ids, _ in batch])[:, None]).long()
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), -1)
            target = logprobs.gather(-1, input_ids[:, 1:, None].to(logits.device))[..., 0]
            nll -= target[scored.to(logits.device)].sum().item()
    return {
        "documents": len(texts),
        "tokens": tokens,
        "bytes": n_bytes,
        "nll": nll,
        "perplexity": math.exp(nll / tokens),
        "bits_per_token": nll / tokens / math.log(2),
        "bits_per_byte": nll / n_bytes / math.log(2),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    from .curriculum import ensure_curriculum
    from .tokenization import load_tokenizer
    from .training import write_json

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", required=True, help="A saved model folder (AutoModelForCausalLM).")
    parser.add_argument(
        "--text", help="Held-out text: JSONL with a `text` field or a plain-text file (default: the curriculum's)."
    )
    parser.add_argument(
        "--eval",
        help="Also score greedy completions on a curriculum evaluation file: a stage name (pretrain, sft, passkey, "
        "reasoning, ...) or a path.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Curriculum seed for the default files.")
    parser.add_argument("--context_length", type=int, help="Sliding-window length (default: the model's maximum).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--output", help="Write the results here as JSON.")
    args = parser.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = load_tokenizer(args.model)

    def curriculum() -> dict:  # generated on first use only (a few seconds), then read from the cache
        return ensure_curriculum(seed=args.seed)

    text_path = args.text or curriculum()["pretrain"]["heldout"]
    results = {"model": args.model, "text": str(text_path)}
    results.update(
        language_model_scores(
            model, tokenizer, load_texts(text_path), context_length=args.context_length, batch_size=args.batch_size
        )
    )
    print(
        f"{text_path}: {results['bits_per_byte']:.4f} bits per byte, perplexity {results['perplexity']:.3f} "
        f"({results['documents']} documents, {results['tokens']} tokens, {results['bytes']} bytes)"
    )
    if args.eval:
        eval_path = Path(args.eval) if Path(args.eval).exists() else curriculum().get(args.eval, {}).get("eval")
        if eval_path is None:
            parser.error(f"--eval {args.eval!r}: neither a file nor a curriculum stage with an eval file")
        records = [r for r in load_eval_records(eval_path) if r.get("task") in SCORERS]
        means, _ = evaluate_with_breakdown(records, make_generate_fn(model, tokenizer, batch_size=args.batch_size))
        results["eval"] = {"file": str(eval_path), "accuracy": means}
        print(f"{eval_path}: " + ", ".join(f"{split} {value:.1%}" for split, value in means.items()))
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
