"""Pretraining batches without padding waste and without cross-document attention, fast on CPU and SDPA.

TRL's own packing (`SFTConfig(packing=True)`) flattens a whole batch into one padding-free row. That is ideal with
FlashAttention's variable-length kernels, but with SDPA or eager attention it materialises a (B*L)^2 mask and pays
B times the attention work of B separate rows. Here documents are packed best-fit-decreasing with TRL's
`pack_dataset` into rows of at most `max_length` tokens, and `PackedCollator` stacks the rows as `[B, L]` with
`position_ids` restarting at every document and no attention mask: transformers' `create_causal_mask` then builds a
block-diagonal causal mask per row. The right padding of a short row is given positions of its own, so it is one
more "document" that real tokens never attend to.
"""

import os
from dataclasses import dataclass

import torch
from datasets import Dataset
from trl import pack_dataset


def tokenize_and_pack(
    dataset: Dataset,
    tokenizer,
    max_length: int,
    strategy: str = "bfd_split",
    num_proc: int | None = None,
) -> Dataset:
    """`text` (already BOS-prefixed by the reader) + EOS -> token ids -> rows of at most `max_length` tokens.

    Args:
        dataset: a dataset with a `text` column.
        tokenizer: the tokenizer; no special tokens are added besides the EOS appended to every document.
        max_length: the row length.
        strategy: TRL's packing strategy; `"bfd_split"` (default) splits documents longer than a row instead of
            dropping their tail as `"bfd"` would.
        num_proc: processes for `dataset.map`.

    Returns:
        A dataset with `input_ids` and `seq_lengths` (the document lengths inside each row).
    """
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    tokenized = dataset.map(
        tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc="Tokenizing"
    )
    return pack_dataset(tokenized, max_length, strategy=strategy, map_kwargs={"num_proc": num_proc})


@dataclass
class PackedCollator:
    """Stack packed rows into `[B, L]` `input_ids`, `labels` and `position_ids` (no `attention_mask`).

    Labels are -100 on padding and on the first token of every document (predicting the next document's first token
    from the previous document's end is noise).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(examples)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        position_ids = torch.empty((batch, length), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = example["input_ids"]
            seq_lengths = example.get("seq_lengths") or [len(ids)]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            pieces = [torch.arange(n) for n in seq_lengths]
            if length > len(ids):
                pieces.append(torch.arange(length - len(ids)))
            position_ids[row] = torch.cat(pieces)
        labels = input_ids.clone()
        labels[position_ids == 0] = -100
        real = torch.tensor([len(e["input_ids"]) for e in examples])[:, None] > torch.arange(length)[None, :]
        labels[~real] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


@dataclass
class SharedPrefixCollator:
    """Wraps an SFT collator: dialogues of a batch that begin with the same tokens (a long system prompt with tool
    schemas, say) share one copy of that prefix instead of each carrying its own.

    The wrapped collator (TRL's, which applies `assistant_only_loss`) builds `input_ids` and `labels` as usual; then
    the batch's rows are sorted, grouped while they share at least `min_prefix` leading tokens, and each group becomes
    one row: the shared prefix once, then every dialogue's remainder, with `position_ids` of each remainder continuing
    from the prefix and a 4D attention mask (`[B, 1, T, T]`, True = attend) in which a remainder sees the prefix and
    itself, causally, and nothing of the others. Every labelled token therefore gets exactly the logits it gets in its
    own row (the loss and gradients are those of the plain batch, up to float rounding) while the prefix's forward and
    backward run once per group. The shared part stops before each dialogue's first labelled token and the token
    before it, so no target is counted once for several dialogues and no remainder's first target is predicted from
    another remainder's last token.

    The curriculum's tool dialogues are about 670 tokens, 594 of them the system prompt with the three tool schemas:
    a batch of 16 feeds about 2,400 tokens instead of about 10,700. Padding positions attend only to themselves.
    `num_tokens_fed` (the batch's non-padding positions) goes with the batch for the trainer's token count, since a
    4D mask's sum is not one.
    """

    collator: object
    min_prefix: int = 16

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        rows = []
        for i in range(batch["input_ids"].shape[0]):
            length = int(mask[i].sum()) if mask is not None else batch["input_ids"].shape[1]
            ids = batch["input_ids"][i, :length].tolist()
            labels = batch["labels"][i, :length].tolist()
            first = next((j for j, label in enumerate(labels) if label != -100), length)
            rows.append((ids, labels, first))
        rows.sort(key=lambda row: row[0])
        groups: list[list] = []
        shared: list[int] = []
        for row in rows:
            if groups:
                common = min(len(os.path.commonprefix([groups[-1][0][0], row[0]])), shared[-1], row[2] - 1)
                if common >= self.min_prefix:
                    groups[-1].append(row)
                    shared[-1] = common
                    continue
            groups.append([row])
            shared.append(row[2] - 1)
        out_ids, out_labels, out_pos, spans = [], [], [], []
        for group, common in zip(groups, shared):
            if len(group) == 1:
                common = 0
            ids, labels, pos = group[0][0][:common], group[0][1][:common], list(range(common))
            segments = []
            for row_ids, row_labels, _ in group:
                segments.append((len(ids), len(ids) + len(row_ids) - common))
                ids += row_ids[common:]
                labels += row_labels[common:]
                pos += range(common, len(row_ids))
            out_ids.append(ids)
            out_labels.append(labels)
            out_pos.append(pos)
            spans.append((common, segments))
        width = max(len(ids) for ids in out_ids)
        multiple = getattr(self.collator, "pad_to_multiple_of", None)
        if multiple:
            width = -(-width // multiple) * multiple
        n = len(out_ids)
        pad_id = getattr(self.collator, "pad_token_id", 0) or 0
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        attention = torch.zeros((n, 1, width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for r, (ids, row_labels, pos, (common, segments)) in enumerate(zip(out_ids, out_labels, out_pos, spans)):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, : len(ids)] = torch.tensor(row_labels)
            position_ids[r, : len(ids)] = torch.tensor(pos)
            attention[r, 0, :common, :common] = causal[:common, :common]
            for start, end in segments:
                attention[r, 0, start:end, :common] = True
                attention[r, 0, start:end, start:end] = causal[: end - start, : end - start]
            padding = torch.arange(len(ids), width)
            attention[r, 0, padding, padding] = True
        fed = sum(len(ids) for ids in out_ids)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": attention,
            "num_tokens_fed": torch.tensor(fed),
        }


__all__ = ["PackedCollator", "SharedPrefixCollator", "tokenize_and_pack"]
