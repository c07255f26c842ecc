"""ollama Modelfile (as text, and its TEMPLATE rendered by Go's text/template against the Jinja chat template) and the
Hub folder (loads with trust_remote_code where minimind_hf is not importable)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from convert_support import PROMPTS, make_tokenizer, save_folder, trained
from fake_hub import FakeHub
from huggingface_hub import ModelCard

from minimind_hf.converters.hub import export_hub
from minimind_hf.converters.ollama import STOP_TOKENS, export_ollama, ollama_template

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
CONVERSATIONS = {
    "user": ([{"role": "user", "content": "你好"}], None, None),
    "system-multi-turn": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "天气?"},
        ],
        None,
        None,
    ),
    "tools-call-results": (
        [
            {"role": "user", "content": "北京天气"},
            {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]},
            {"role": "tool", "content": "晴"},
            {"role": "tool", "content": "25C"},
        ],
        TOOLS,
        None,
    ),
    "tools-system": ([{"role": "system", "content": "Use tools."}, {"role": "user", "content": "hi"}], TOOLS, None),
    "think-on": ([{"role": "user", "content": "1+1?"}], None, True),
    "think-off-history": (
        [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2", "reasoning_content": "one plus one"},
            {"role": "user", "content": "2+2?"},
        ],
        None,
        False,
    ),
}


def _ollama_data(messages, tools, think):
    """What ollama hands the template: Go-side field names; tool-call arguments print as compact JSON."""
    rows = []
    for m in messages:
        calls = [
            {"Function": {"Name": c["function"]["name"], "Arguments": json.dumps(c["function"]["arguments"])}}
            for c in m.get("tool_calls", [])
        ]
        rows.append(
            {
                "Role": m["role"],
                "Content": m["content"],
                "Thinking": m.get("reasoning_content", ""),
                "ToolCalls": calls,
            }
        )
    return {"Messages": rows, "Tools": tools or [], "Think": bool(think), "IsThinkSet": think is not None}


def _normalise_json_lines(text):
    """Compare JSON lines (tool signatures, tool calls) as JSON: ollama writes them compactly, Jinja with spaces."""
    lines = []
    for line in text.split("\n"):
        try:
            lines.append(json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False))
        except ValueError:
            lines.append(line)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory):
    assert shutil.which("go"), "Go is not installed: run `bash .ci/engines.sh go` (Debian golang-go)"
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(out / "cache"), "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
    source = os.path.join(REPO, "tests", "engine_scripts", "render_gotemplate.go")
    subprocess.run(["go", "build", "-o", out / "render", source], check=True, env=env, cwd=out)
    return out / "render"


@pytest.mark.go
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_ollama_template_renders_like_the_chat_template(name, go_renderer):
    messages, tools, think = CONVERSATIONS[name]
    kwargs = {} if think is None else {"enable_thinking": think}
    expected = make_tokenizer().apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
    )
    payload = json.dumps({"template": ollama_template(), "data": _ollama_data(messages, tools, think)})
    rendered = subprocess.run([go_renderer], input=payload, capture_output=True, text=True, check=True).stdout
    assert _normalise_json_lines(rendered) == _normalise_json_lines(expected)


@pytest.mark.go
def test_ollama_template_without_default_system(go_renderer):
    messages = [{"role": "user", "content": "你好"}]
    expected = make_tokenizer().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, default_system_prompt=None
    )
    payload = json.dumps({"template": ollama_template(None), "data": _ollama_data(messages, None, None)})
    assert subprocess.run([go_renderer], input=payload, capture_output=True, text=True, check=True).stdout == expected


def test_modelfile_text(tmp_path):
    out = export_ollama(save_folder(trained("dense"), tmp_path / "src"), tmp_path / "ollama", outtype="q8_0")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-q8_0.gguf"]
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == ollama_template()
    for token in STOP_TOKENS:
        assert f'PARAMETER stop "{token}"' in text
    assert "PARAMETER temperature 0.85" in text and "PARAMETER top_p 0.85" in text
    assert "PARAMETER num_ctx 1024" in text  # capped at the model's max_position_embeddings
    # Every TEMPLATE action is balanced (a cheap syntax check where Go is not installed).
    opened = template.count("{{ if ") + template.count("{{ range ") + template.count("{{ with ")
    assert opened == template.count("{{ end }}")


def test_hub_folder_loads_as_remote_code_without_minimind_hf(tmp_path):
    model = trained("moe_shared")
    out = export_hub(save_folder(model, tmp_path / "src"), tmp_path / "hub", repo_id="someone/minimind-tiny")
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "configuration_minimind.py", "modeling_minimind.py", "model.safetensors"} <= names
    assert {"tokenizer.json", "chat_template.jinja", "generation_config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForSequenceClassification",
    }
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert "custom_code" in card.data.tags and "trust_remote_code=True" in card.text

    ids = make_tokenizer()(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    # A fresh interpreter where `import minimind_hf` fails: only the folder's remote code can build the model.
    script = f"""
import sys
sys.modules["minimind_hf"] = None
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
folder = {str(out)!r}
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
expected = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    diff = (model(expected["ids"]).logits - expected["logits"]).abs().max().item()
assert diff == 0.0, diff
AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=1)
assert AutoTokenizer.from_pretrained(folder).chat_template
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_to_hub_push_uploads_the_folder_byte_for_byte(tmp_path):
    """`convert/to_hub.py --push --private` against a local Hub stand-in: the repository is created private and one
    commit carries every file of the exported folder, unchanged; the printed URL is the one the Hub answered."""
    src = save_folder(trained("dense"), tmp_path / "src")
    out = tmp_path / "hub"
    argv = [sys.executable, os.path.join(REPO, "convert", "to_hub.py"), "--model", str(src), "--out", str(out)]
    argv += ["--repo_id", "someone/minimind-tiny", "--push", "--private"]
    with FakeHub() as hub:
        proc = subprocess.run(argv, env={**os.environ, **hub.env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not hub.errors, hub.errors
    repo = hub.repos["someone/minimind-tiny"]
    assert repo["private"] and repo["commits"] == ["Upload MiniMind model"]
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "README.md", "modeling_minimind.py"} <= set(local)
    assert repo["files"] == local
    assert f"pushed to {hub.endpoint}/someone/minimind-tiny" in proc.stdout
