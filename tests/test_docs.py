"""Every command and Python snippet in the README files works as written.

Commands are read from the documents themselves: fenced `bash` / `python` blocks and inline code that starts with a
command. Each is run, in document order, in a sandbox folder (the repository's `recipes/`, `accelerate_configs/` and
`convert/` linked in, fixtures under the names the documents use), so a command that depends on an earlier one's
output finds it. What runs how:

- tiny-preset recipes, converters, the curriculum CLI and the Python snippets run for real (recipes with
  `--max_steps 1`), each in a child forked from a process that imported the libraries once (`tests/forkrun.py`:
  what `python` would do, minus 4-5 s of imports per command);
- recipes on GPU presets are parsed by their own argument parser (as `accelerate launch` would start them; without a
  GPU their bf16 becomes CPU autocast or fp32, by the CPU), and so is the quickstart (`make quickstart` runs it for real elsewhere);
- `make` targets are checked with `make -n`;
- `--push` uploads to a local Hub stand-in (`fake_hub.FakeHub`), which must receive the folder;
- commands that need what this machine cannot have (a GPU engine, ollama) are listed in `NOT_HERE`
  with the reason; every entry there must still appear in the documents, and every documented command must be
  handled, so a new command cannot go unchecked.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fake_hub import FakeHub
from forkrun import Forkrun
from test_roundtrip import upstream_config

from minimind_hf import MiniMindConfig, MiniMindForCausalLM
from minimind_hf.tokenization import load_tokenizer
from recipes import (
    distill,
    dpo,
    grpo,
    lora,
    merge_lora,
    ppo,
    pretrain,
    quickstart,
    reason,
    reward,
    seeds,
    sft,
    spo,
    train_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]

DOCS = ["README.md", "recipes/README.md", "convert/README.md", "accelerate_configs/README.md", "docs/data.md"]
COMMAND_START = re.compile(r"^(python3? |accelerate launch |make |bash |pytest |llama-server |cd |lm_eval )")

RECIPES = (pretrain, sft, lora, merge_lora, dpo, distill, reward, grpo, ppo, spo, reason, train_tokenizer)
RECIPE_MODULES = {module.__name__.split(".")[-1]: module for module in RECIPES}
TRAINING = {"pretrain", "sft", "lora", "dpo", "distill", "reward", "grpo", "ppo", "spo", "reason"}
ONE_STEP = ["--max_steps", "1", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none"]

NOT_HERE = {
    "make quickstart": "the quickstart itself (tests/test_quickstart.py runs it; `make -n` would hide nothing)",
    "make test": "the test suite itself",
    "python -m vllm.entrypoints.openai.api_server --model out/minimind2-small-llama"
    " --enable-auto-tool-choice --tool-call-parser hermes --reasoning-parser qwen3": "vLLM lives in its own venv "
    "(.ci/engines.sh); tests/test_serving.py serves through it",
    "python -m vllm.entrypoints.openai.api_server --model out/minimind2-moe"
    " --enable-auto-tool-choice --tool-call-parser hermes --reasoning-parser qwen3": "as above",
    "llama-server -m out/minimind2-small-f16.gguf --jinja --reasoning-format deepseek": "built by .ci/engines.sh; tests/test_serving.py runs it",
    "cd out/minimind2-small-ollama && ollama create minimind2-small -f Modelfile && ollama run minimind2-small": (
        "ollama cannot be installed here; tests/test_convert_ollama_hub.py renders its template with Go"
    ),
    "python -m minimind_hf.eval_tools --model outputs/quickstart/sft --curriculum_seed 0": "minutes of generation on "
    "the quickstart's output; tests/test_eval_tools.py runs the CLI on a tiny model",
    "bash .ci/engines.sh": "builds the engines (tens of minutes); CI runs it",
    'pytest -m "vllm or llamacpp or go"': "the engine tests (make test-engines)",
    "pytest -m slow tests/test_post_training_effects.py -s": "the slow tier (make test-slow)",
    "pytest -m slow tests/test_rl_effects.py -s": "the slow tier's RL part (make test-slow)",
    "lm_eval --model hf --model_args pretrained=outputs/quickstart/sft,trust_remote_code=True --tasks ceval-valid,"
    "cmmlu,openbookqa,arc_easy,arc_challenge,piqa,hellaswag --apply_chat_template": "lm-eval downloads these datasets "
    "from the Hub, which this machine cannot reach; tests/test_lm_eval.py runs the harness on the shipped tasks",
    "python benchmarks/yarn_context.py --threads 2": "a minute of generation on the passkey model; "
    "tests/test_yarn_context.py runs the script on a tiny model",
    "pytest -m browser": "the web chat in Chromium (.ci/run installs Debian's chromium and runs it)",
}


def documented() -> list[tuple[str, str]]:
    """(document, command) in reading order: shell lines of fenced bash blocks (continuations joined, comments
    dropped), fenced python blocks whole, and inline code spans that start with a command."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        spans = []
        for match in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
            spans.append((match.start(), match.group(1), match.group(2)))
        fenced = [(m.start(), m.end()) for m in re.finditer(r"```.*?```", text, re.S)]
        for match in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)?)`", text):
            if not any(a <= match.start() < b for a, b in fenced):
                spans.append((match.start(), "inline", match.group(1)))
        for _, kind, body in sorted(spans, key=lambda span: span[0]):
            if kind == "python":
                found.append((doc, body))
            elif kind == "bash":
                for line in body.replace("\\\n", " ").splitlines():
                    line = re.sub(r"(^|\s{2,})#.*$", "", line).strip()
                    if line:
                        found.append((doc, re.sub(r"\s+", " ", line)))
            elif kind == "inline" and COMMAND_START.match(body.strip()):
                found.append((doc, re.sub(r"\s+", " ", body.strip())))
    return found


def write_fixtures(sandbox: Path) -> None:
    """Files the documents name as inputs, with real shapes: upstream's `full_sft_512.pth` (MiniMind2-Small) and
    `full_sft_640_moe.pth` (MiniMind2-MoE) as fp16 state dicts, upstream's tokenizer folder `minimind/model`, a
    published upstream folder `MiniMind2`, and the folders the Python snippet loads."""
    for name in ("recipes", "accelerate_configs", "convert", "minimind_hf"):
        (sandbox / name).symlink_to(ROOT / name)
    tokenizer = load_tokenizer()
    tokenizer.save_pretrained(sandbox / "minimind/model")
    torch.manual_seed(0)
    for preset, name in (("minimind2-small", "full_sft_512.pth"), ("minimind2-moe", "full_sft_640_moe.pth")):
        model = MiniMindForCausalLM(MiniMindConfig.from_preset(preset))
        torch.save({k: v.detach().half().clone() for k, v in model.state_dict().items()}, sandbox / name)
    tiny = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny"))
    folder = sandbox / "MiniMind2"
    tokenizer.save_pretrained(folder)
    torch.save({k: v.detach().half().clone() for k, v in tiny.state_dict().items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(upstream_config(tiny.config, "minimind2")))
    for path in ("outputs/quickstart/pretrain", "outputs/quickstart/sft", "folder"):
        tiny.save_pretrained(sandbox / path)
        tokenizer.save_pretrained(sandbox / path)


def script_and_args(command: str) -> tuple[str, list[str]]:
    """The Python script a `python ...` or `accelerate launch ...` command starts, and its arguments; an accelerate
    config it names must exist and parse."""
    words = shlex.split(command)
    if words[:2] == ["accelerate", "launch"]:
        script = next(i for i, word in enumerate(words) if word.endswith(".py"))
        config = words[words.index("--config_file") + 1]
        assert (ROOT / config).is_file(), config
        yaml.safe_load((ROOT / config).read_text())
        return words[script], words[script + 1 :]
    assert words[0] in ("python", "python3"), command
    return words[1], words[2:]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
# The test's Forkrun (tests/forkrun.py): Python commands in the documents' environment start from a process that has
# imported the libraries already, instead of paying 4-5 s of imports each.
FORKRUN: list[Forkrun] = []


def succeeds(argv: list, cwd: Path, **env_extra) -> None:
    """Run a command offline with stdin closed (the chat CLI then reads no turns and exits); it must exit 0."""
    if argv[0] == sys.executable and not env_extra and FORKRUN:
        run = FORKRUN[0](argv[1:], cwd)
    else:
        env = {**ENV, **env_extra}
        run = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]


def check(command: str, sandbox: Path) -> str:
    """Run or parse one documented command; returns what was done (for the test's report)."""
    if "\n" in command or command.startswith(("import ", "from ")):
        succeeds([sys.executable, "-c", command], sandbox)
        return "ran the snippet"
    if command.startswith("lm_eval "):  # the harness's CLI on the fixtures, a few documents per task
        succeeds([sys.executable, "-m", "lm_eval", *shlex.split(command)[1:], "--limit", "4"], sandbox)
        return "ran 4 documents per task"
    if command.startswith("make "):
        succeeds(["make", "-n", *shlex.split(command)[1:]], ROOT)
        return "make -n"
    script, args = script_and_args(command)
    if script == "-m":
        succeeds([sys.executable, "-m", *args], sandbox)
        return "ran"
    stage = Path(script).stem
    if "--push" in args:
        with FakeHub() as hub:
            succeeds([sys.executable, script, *args], sandbox, **hub.env)
        repo_id = args[args.index("--repo_id") + 1]
        assert not hub.errors and "model.safetensors" in hub.repos[repo_id]["files"], hub.errors
        return "ran against a local Hub stand-in"
    if script.startswith("convert/") or "recipes/tiny/" in command or "outputs/tiny/" in command:
        extra = ONE_STEP if stage in TRAINING else []
        if stage == "grpo":  # one prompt's group in the one step, not eight (the agent's prompts are ~600 tokens)
            extra = [*extra, "--per_device_train_batch_size", "8"]
        succeeds([sys.executable, script, *args, *extra], sandbox)
        return "ran" + (" one step" if extra else "")
    if stage in ("quickstart", "seeds"):  # minutes of training per run: tests/test_quickstart.py runs them
        {"quickstart": quickstart, "seeds": seeds}[stage].make_parser().parse_args_and_config(args)
        return "parsed"
    assert stage in RECIPE_MODULES, f"no rule for {command!r}"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the documents' relative paths are from the repository root
    try:
        RECIPE_MODULES[stage].make_parser().parse_args_and_config(args)
    finally:
        os.chdir(cwd)
    return "parsed"


def test_every_documented_command_works_as_written(tmp_path):
    commands = documented()
    texts = [command for _, command in commands]
    assert len(texts) > 30, texts  # the extraction found the documents' commands
    assert not [entry for entry in NOT_HERE if entry not in texts], "NOT_HERE lists commands no document has"
    write_fixtures(tmp_path)
    failures, report = [], []
    (tmp_path / ".logs").mkdir()
    with Forkrun(ENV, tmp_path / ".logs") as forkrun:
        FORKRUN.append(forkrun)
        try:
            for doc, command in commands:
                if command in NOT_HERE or re.search(r"<\w+>", command):  # placeholders: a usage synopsis
                    continue
                start = time.time()
                try:
                    done = check(command, tmp_path)
                    report.append(f"{doc}: {done} ({time.time() - start:.1f} s): {command[:90]}")
                except (AssertionError, SystemExit, Exception) as error:  # collect them all, then fail once
                    failures.append(f"{doc}: {command}\n    {type(error).__name__}: {str(error)[-1500:]}")
        finally:
            FORKRUN.clear()
    print("\n".join(report))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("```bash\npython a.py \\\n    --x 1  # note\n# comment\n```", ["python a.py --x 1"]),
        ("run `python b.py --y 2` then `not a command`", ["python b.py --y 2"]),
    ],
)
def test_extraction_reads_blocks_and_inline_commands(tmp_path, monkeypatch, text, expected):
    (tmp_path / "doc.md").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", ["doc.md"])
    assert [command for _, command in documented()] == expected
