"""Agentic RL (recipes/grpo.py with `tools`, TRL's multi-turn tool loop): the shipped agent YAML parses; tools are
time-limited with their schemas intact; a tiny model that learnt to call the calculator trains two steps in which
TRL runs its calls, feeds the replies back (masked from the loss: exactly the tool-reply tokens) and scores the
final answer; bad tool settings stop before training."""

import json
import time

import pytest
from transformers.utils import get_json_schema
from trl import GRPOTrainer

from minimind_hf.curriculum import build_world, make_tools
from minimind_hf.curriculum.tools import calculator, tool_schemas
from minimind_hf.eval_tools import time_limited
from minimind_hf.rewards import get_reward_funcs
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import RecipeError
from recipes import grpo, sft
from tests.utils import memorised_replies, parse_shipped_yaml, shipped_yamls

SYSTEM = "You can use tools to answer."
QUESTION = "Please calculate 41 + 69."
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "41 + 69"}}\n</tool_call>'
FINAL = "41 + 69 = 110."


@pytest.mark.parametrize("path", shipped_yamls({"agent"}))
def test_every_agent_yaml_parses(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, grpo)
    assert data_args.tools == ["curriculum"] and data_args.curriculum_stage == "agent"
    assert training_args.max_tool_calling_iterations >= 1 and model_args.model_name_or_path
    get_reward_funcs(data_args.reward_funcs)
    assert len(grpo.build_tools(data_args)) == 3


@pytest.mark.parametrize("path", shipped_yamls({"sft_tools"}))
def test_every_tool_sft_yaml_parses(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, sft)
    assert data_args.curriculum_stage == "tools" and training_args.assistant_only_loss
    assert training_args.output_dir == raw["output_dir"] and model_args.model_name_or_path


def slow_tool(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "done"


def test_tools_are_time_limited_and_keep_their_schemas():
    tools = make_tools(build_world(0))
    wrapped = [time_limited(fn, 0.2) for fn in tools.values()]
    assert [get_json_schema(fn) for fn in wrapped] == tool_schemas(tools)  # what SFT's tool dialogues show
    assert wrapped[0](expression="41 + 69") == "110"
    assert wrapped[0](expression="1 +").startswith("error:") and wrapped[0](bad=1).startswith("error:")
    start = time.perf_counter()
    assert time_limited(slow_tool, 0.2)(seconds=5) == "error: slow_tool timed out after 0.2 s"
    assert time.perf_counter() - start < 1.0


def test_bad_tool_settings_stop_before_training(tmp_path):
    parser = grpo.make_parser()
    base = ["--config", "recipes/tiny/agent.yaml", "--output_dir", str(tmp_path / "x")]
    for tools, message in (
        (["no_such_tool"], "neither `curriculum` nor a dotted path"),
        (["minimind_hf.curriculum.tools.nothing"], "neither `curriculum` nor a dotted path"),
        (["curriculum", "minimind_hf.curriculum.tools.calculator"], "share a name"),
    ):
        with pytest.raises(RecipeError, match=message):
            grpo.build_tools(parser.parse_args_and_config([*base, "--tools", *tools])[0])
    with pytest.raises(ValueError, match="conversational prompts"):
        grpo.main(*parser.parse_args_and_config([*base, "--thinking_ratio", "0.5"]))
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def calculator_agent(tmp_path_factory):
    """A tiny model folder trained for a few CPU seconds to answer QUESTION with CALL and, once the tool said 110, with
    FINAL, on the prompts TRL renders (the system prompt with the calculator's schema)."""
    tokenizer = load_tokenizer()
    schema = [time_limited(calculator)]
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    after_call = [
        *conversation,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "41 + 69"}}}
            ],
        },
        {"role": "tool", "name": "calculator", "content": "110"},
    ]
    examples = [
        (tokenizer.apply_chat_template(messages, tools=schema, add_generation_prompt=True, tokenize=False), reply)
        for messages, reply in ((conversation, CALL), (after_call, FINAL))
    ]
    model = memorised_replies(tokenizer, examples)
    out = tmp_path_factory.mktemp("agent") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    rows = out.parent / "agent.jsonl"
    record = {
        "conversations": [
            {"role": "system", "content": SYSTEM, "tools": json.dumps(tool_schemas({"calculator": calculator}))},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ""},
        ],
        "gt": ["110"],
    }
    rows.write_text(json.dumps(record) + "\n")
    return out, rows


def test_two_agent_steps_run_the_tool_mask_its_reply_and_score_the_answer(calculator_agent, tmp_path, monkeypatch):
    model_dir, rows = calculator_agent
    batches = []
    original = GRPOTrainer._generate_and_score_completions

    def capture(self, inputs):
        output = original(self, inputs)
        batches.append(output)
        return output

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", capture)
    argv = [
        "--config", "recipes/tiny/agent.yaml",
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(tmp_path / "run"),
        "--dataset_files", str(rows),
        "--tools", "minimind_hf.curriculum.tools.calculator",
        "--max_steps", "2",
        "--num_generations", "4",
        "--per_device_train_batch_size", "4",
        "--max_completion_length", "96",
        "--logging_steps", "1",
        "--temperature", "0.3",
    ]  # fmt: skip
    grpo.main(*grpo.make_parser().parse_args_and_config(argv))
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "reward" in e]
    assert len(steps) == 2
    assert all(e["tools/call_frequency"] > 0 and e["rewards/exact_answer/mean"] > 0 for e in steps), steps
    assert all(e["rewards/tool_call_valid/mean"] > 0 for e in steps)
    tokenizer = load_tokenizer(model_dir)
    replies = 0
    for batch in batches:
        for ids, mask, tool_mask in zip(batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]):
            ids, counted, masked = ids.tolist(), (mask * tool_mask).tolist(), (mask * (1 - tool_mask)).tolist()
            text = tokenizer.decode([i for i, m in zip(ids, masked) if m])
            if "110" in text:  # the tool ran: its reply is exactly the masked span, the model's turns are not
                replies += 1
                assert "<tool_response>" in text and CALL not in text and FINAL not in text
                trained = tokenizer.decode([i for i, m in zip(ids, counted) if m])
                assert trained.startswith(CALL) and "<tool_response>" not in trained
    assert replies > 0
