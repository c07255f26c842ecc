"""Pretraining batches without padding waste and without cross-document attention, fast on CPU and SDPA.

TRL's own packing (`SFTConfig(packing=True)`) flattens a whole batch into one padding-free row. That is ideal with
FlashAttention's variable-length kernels, but with SDPA or eager attention it materialises a (B*L)^2 mask and pays
B times the attention work of B separate rows. Here documents are packed best-fit-decreasing with TRL's
`pack_dataset` into rows of at most `max_length` tokens, and `PackedCollator` stacks the rows as `[B, L]` with
`position_ids` restarting at every document and no attention mask: transformers' `create_causal_mask` then builds a
block-diagonal causal mask per row. The right padding of a short row is given positions of its own, so it is one
more "document" that real tokens never attend to.
"""

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


__all__ = ["PackedCollator", "tokenize_and_pack"]
