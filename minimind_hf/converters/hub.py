"""MiniMind -> a folder ready for `push_to_hub` / `upload_folder`: weights, config with the full `auto_map`, the
remote-code files (`configuration_minimind.py`, `modeling_minimind.py`), tokenizer with chat template, generation
config and a model card with Hub metadata. It loads with `trust_remote_code=True` where minimind_hf is not
installed."""

import os
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..configuration_minimind import AUTO_MAP, MiniMindConfig
from ..modeling_minimind import MiniMindForCausalLM
from .common import ConversionError, atomic_output, copy_tokenizer_files, describe_model, resolve_source

REMOTE_CODE_FILES = ("configuration_minimind.py", "modeling_minimind.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]

CARD_BODY = """
# {name}

A [MiniMind](https://github.com/jingyaogong/minimind) causal language model ({description}, {params:,} parameters),
packaged by `minimind_hf`. It ships its own modeling code: load it with `trust_remote_code=True`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
messages = [{{"role": "user", "content": "你好"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0], skip_special_tokens=True))
```

| field | value |
|---|---|
| hidden size / layers | {config.hidden_size} / {config.num_hidden_layers} |
| heads (q / kv) / head_dim | {config.num_attention_heads} / {config.num_key_value_heads} / {config.head_dim} |
| vocabulary | {config.vocab_size} (byte-level BPE, ChatML template) |
| RoPE | {rope} |
"""


def count_parameters(config: MiniMindConfig, state_dict) -> int:
    """Parameters with a tied lm_head counted once."""
    return sum(t.numel() for n, t in state_dict.items() if not (n == "lm_head.weight" and config.tie_word_embeddings))


def model_card(config: MiniMindConfig, state_dict, repo_id: str, name: str) -> ModelCard:
    """Model card with Hub metadata (license, library, pipeline tag, languages, tags)."""
    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        language=["zh", "en"],
        tags=["minimind", "custom_code", "text-generation"] + (["moe"] if config.num_experts else []),
    )
    rope = config.rope_parameters
    rope_text = f"theta {rope['rope_theta']:g}"
    if rope.get("rope_type") == "yarn":
        rope_text += f", YaRN x{rope['factor']:g} over {rope['original_max_position_embeddings']} positions"
    body = CARD_BODY.format(
        name=name,
        description=describe_model(config),
        params=count_parameters(config, state_dict),
        repo_id=repo_id,
        config=config,
        rope=rope_text,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def export_hub(
    src,
    dst: str | os.PathLike,
    repo_id: str = "your-name/minimind",
    tokenizer=None,
    overwrite: bool = False,
) -> Path:
    """Write a Hub-ready folder.

    Args:
        src: MiniMind folder or `MiniMindForCausalLM`.
        dst: output folder (written to a temporary folder and renamed when complete).
        repo_id: the Hub repository the model card's usage snippet names.
        tokenizer: tokenizer object or folder; defaults to the source folder's tokenizer files.
    """
    config, state_dict, folder = resolve_source(src)
    if tokenizer is None and folder is None:
        raise ConversionError("tokenizer: the source is an in-memory model; pass tokenizer= (object or folder)")
    model = src if folder is None else MiniMindForCausalLM.from_pretrained(folder, dtype="auto")
    # Every head loads as remote code (save_pretrained alone would list only the saved class).
    model.config.auto_map = dict(AUTO_MAP)
    with atomic_output(dst, overwrite=overwrite) as out:
        model.save_pretrained(out)
        # The package's own files, whatever the source folder carried: remote code must match this config format.
        for name in REMOTE_CODE_FILES:
            shutil.copy2(PACKAGE_DIR / name, out / name)
        if tokenizer is None:
            copy_tokenizer_files(folder, out)
        elif isinstance(tokenizer, (str, os.PathLike)):
            copy_tokenizer_files(tokenizer, out)
        else:
            tokenizer.save_pretrained(out)
        if not (out / "tokenizer.json").is_file():
            raise ConversionError("tokenizer: no tokenizer.json for the Hub folder")
        name = repo_id.split("/")[-1]
        model_card(config, state_dict, repo_id, name).save(out / "README.md")
    return Path(dst)


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload a folder written by `export_hub` to the Hub `HF_ENDPOINT` names (needs a token: `hf auth login` or
    `HF_TOKEN`). Returns the repository's URL as the Hub reports it."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload MiniMind model")
    return str(url)
