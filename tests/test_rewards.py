"""The RL reward registry: every reward's exact values, name resolution, column and output checks, the reward model."""

import json
import math
import sys
import types

import pytest
import torch
from utils import tiny_config

from minimind_hf import MiniMindForSequenceClassification
from minimind_hf.curriculum import calculator, convert_units, tool_schemas
from minimind_hf.rewards import (
    REWARD_FACTORIES,
    REWARD_FUNCS,
    Reward,
    assistant_turn,
    check_reward_columns,
    get_reward_funcs,
    resolve_reward,
    visible_answer,
)
from minimind_hf.tokenization import load_tokenizer

OPENED = "<|im_start|>assistant\n<think>\n"  # a text prompt whose generation prompt opened the think block
TOOLS = json.dumps(tool_schemas({"calculator": calculator, "convert_units": convert_units}))


def said(content: str, **fields) -> list[dict]:
    return [{"role": "assistant", "content": content, **fields}]


def call(name: str, arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_exact_answer():
    (exact,) = get_reward_funcs("exact_answer")
    cases = [
        ("7 + 5 = 12.", ["12"], 1.0),
        ("-12", ["12"], 0.0),  # a sign or a decimal point glues to the number
        ("2.12", ["12"], 0.0),
        ("13", ["12"], 0.0),
        (said("<think>\n7 + 5 is 12\n</think>\n<answer>\n12\n</answer>"), ["12"], 1.0),
        ("<think>\nmaybe 12\n</think>\nit is 13", ["12"], 0.0),  # the thinking is not the answer
        ("Alice lives in Petaro.", ["Petaro"], 1.0),
        ("Alice lives in XPetaro.", ["Petaro"], 0.0),
        (said("Alice lives in PETARO"), ["Lund", "Petaro"], 1.0),  # any gt, case-folded
        ("她最喜欢的颜色是紫色。", ["紫色"], 1.0),
        (said("<think>\n想一想\n</think>\n\n紫色"), ["紫色"], 1.0),
        ("她最喜欢的颜色是紫色的", ["紫色"], 0.0),
        ("12", [], None),  # nothing to match: the reward does not apply
    ]
    completions, gt, expected = zip(*cases)
    assert exact(completions=list(completions), gt=list(gt)) == list(expected)
    # An unclosed think block opened by the prompt hides everything after it.
    assert exact(prompts=[OPENED, "Q"], completions=["so 12", "so 12"], gt=[["12"], ["12"]]) == [0.0, 1.0]
    assert exact(prompts=[OPENED], completions=["so\n</think>\n12"], gt=[["12"]]) == [1.0]


def test_think_format():
    (fmt,) = get_reward_funcs(["think_format"])
    completions = [
        "<think>\nx\n</think>\n<answer>\n12\n</answer>",
        said("<think>\nx\n</think>\n\n<answer>\n12\n</answer>\n"),  # the chat template's two newlines
        "<think>\nx\n</think> <answer>12</answer>",  # tags right, layout wrong
        "<think>\nx\n</think>\n12",
        "12",
        "<think>\nx\n<think>\n</think>\n<answer>\n12\n</answer>",  # the layout holds; `<think>` twice costs 0.125
        "x\n</think>\n<answer>\n12\n</answer>",  # the generation prompt opened the block
        said("<answer>\n12\n</answer>", reasoning_content="x"),  # the reasoning parsed out of the content
    ]
    assert fmt(completions=completions) == [1.0, 1.0, 0.5, 0.25, 0.0, 0.875, 1.0, 1.0]
    assert fmt(prompts=[OPENED], completions=["x\n</think>\n<answer>\n12\n</answer>"]) == [1.0]
    assert assistant_turn(said("12", reasoning_content="x\n")) == "<think>\nx\n</think>\n12"
    assert assistant_turn("x", OPENED) == "<think>\nx" and visible_answer("x", OPENED) == ""


def test_length_window():
    window = get_reward_funcs("length_window", length_window={"min_chars": 2, "max_chars": 4, "falloff_chars": 4})[0]
    completions = ["", "a", "ab", "abcd", "abcdef", "abcdefgh", "abcdefghij", "<think>\nlong thoughts\n</think>\nabc"]
    assert window(completions=completions) == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0, 1.0]
    assert window(completions=[said("紫色"), said("紫")]) == [1.0, 0.5]  # characters, not bytes
    default = resolve_reward("length_window")
    assert default(completions=["", "a" * 128, "a" * 192, "a" * 300]) == [0.0, 1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        resolve_reward("length_window", min_chars=5, max_chars=2)
    with pytest.raises(ValueError, match="reward 'length_window'.*max_char"):
        resolve_reward("length_window", max_char=5)


def test_repetition_penalty_is_trls():
    (default,) = get_reward_funcs("repetition_penalty")
    ids = [[1, 2, 3, 1, 2, 3], [1, 2, 3, 4], [7, 7]]
    assert default(completions=["", "", ""], completion_ids=ids) == [-0.25, 0.0, 0.0]
    custom = get_reward_funcs("repetition_penalty", repetition_penalty={"ngram_size": 2, "max_penalty": -0.5})[0]
    assert custom(completions=[""], completion_ids=[[5, 5, 5, 5, 5]]) == [-0.375]
    assert custom.__name__ == "repetition_penalty"
    with pytest.raises(ValueError, match=r"'repetition_penalty' needs the column\(s\) \['completion_ids'\]"):
        default(completions=["a"])
    with pytest.raises(ValueError, match="should not be positive"):
        resolve_reward("repetition_penalty", max_penalty=1.0)


def test_tool_call_valid():
    (valid,) = get_reward_funcs("tool_call_valid")
    structured = said(
        "",
        tool_calls=[
            {"type": "function", "function": {"name": "convert_units", "arguments": {"value": 5, "from_unit": "km"}}}
        ],
    )
    structured[0]["tool_calls"][0]["function"]["arguments"]["to_unit"] = "m"
    cases = [
        (call("calculator", {"expression": "1+1"}), 1.0),
        (said("sure\n" + call("calculator", json.dumps({"expression": "1+1"}))), 1.0),  # arguments as a string
        (structured, 1.0),  # TRL's parsed tool calls
        (call("calculator", {"expression": "1"}) + call("convert_units", {"value": 1, "from_unit": "m"}), 0.0),
        ('<tool_call>\n{"name": "calculator", </tool_call>', 0.0),  # broken JSON
        (call("lookup", {"entity": "Alice", "attribute": "city"}), 0.0),  # not one of the row's tools
        (call("convert_units", {"value": 5}), 0.0),  # required arguments missing
        (call("calculator", {"expression": "1", "precision": 2}), 0.0),  # an argument the schema lacks
        ("<tool_call>\n" + json.dumps({"name": "calculator", "arguments": {"expression": "1"}}), 0.0),  # cut off
        ("12", 0.0),  # tools offered, none called
    ]
    completions, expected = zip(*cases)
    assert valid(completions=list(completions), tools=[TOOLS] * len(cases)) == list(expected)
    assert valid(completions=[call("calculator", {"expression": "1+1"})], tools=[json.loads(TOOLS)]) == [1.0]
    # A row that offers no tools: abstaining is right, any call is wrong.
    no_call, a_call = "12", call("calculator", {"expression": "1+1"})
    assert valid(completions=[no_call, a_call, no_call, a_call], tools=[None, None, "", "[]"]) == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"'tool_call_valid' needs the column\(s\) \['tools'\]"):
        valid(completions=[no_call], gt=[["12"]])


def test_names_dotted_paths_and_unknown(monkeypatch):
    funcs = get_reward_funcs("exact_answer, think_format,tool_call_valid")
    assert [fn.__name__ for fn in funcs] == ["exact_answer", "think_format", "tool_call_valid"]
    assert [fn.columns for fn in funcs] == [("gt",), (), ("tools",)]
    (trl_think,) = get_reward_funcs(["trl.rewards.think_format_reward"])
    assert trl_think.__name__ == "think_format_reward"
    assert trl_think(completions=[said("<think>\nx\n</think>\n12"), said("12")]) == [1.0, 0.0]

    module = types.ModuleType("my_rewards")

    def has_seven(completions, answer, **kwargs):
        return [float("7" in c) for c in completions]

    has_seven.columns = ("answer",)
    module.has_seven, module.constant = has_seven, 3
    monkeypatch.setitem(sys.modules, "my_rewards", module)
    fn = resolve_reward("my_rewards.has_seven")
    assert (fn.__name__, fn.columns) == ("has_seven", ("answer",))
    assert fn(completions=["7", "8"], answer=["", ""]) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"'has_seven' needs the column\(s\) \['answer'\]"):
        fn(completions=["7"])

    known = str(sorted({*REWARD_FUNCS, *REWARD_FACTORIES}))
    for name, reason in [
        ("nope", "not a known name"),
        ("my_rewards.missing", "cannot import it"),
        ("no_such_package.fn", "cannot import it"),
        ("my_rewards.constant", "it is not callable (int)"),
    ]:
        with pytest.raises(ValueError) as error:
            get_reward_funcs([name])
        assert str(error.value).startswith(f"unknown reward {name!r}: {reason}")
        assert str(error.value).endswith(f"known rewards: {known}")
    with pytest.raises(ValueError, match="'exact_answer' takes no options"):
        resolve_reward("exact_answer", strict=True)
    with pytest.raises(ValueError, match=r"options given for reward\(s\) \['length_window'\]"):
        get_reward_funcs("exact_answer", length_window={"max_chars": 4})


def test_check_reward_columns():
    funcs = get_reward_funcs("exact_answer,think_format,tool_call_valid,repetition_penalty")
    check_reward_columns(funcs, ["prompt", "gt", "tools"])  # completion_ids comes from the trainer
    with pytest.raises(ValueError) as error:
        check_reward_columns(funcs, ["prompt"])
    assert str(error.value) == (
        "reward 'exact_answer' needs column(s) ['gt']; reward 'tool_call_valid' needs column(s) ['tools']; "
        "the dataset has ['prompt']"
    )


def test_output_checks():
    def returning(values):
        return Reward(lambda **kwargs: values, "fixed")

    assert returning([None, 1, 0.5])(completions=["a", "b", "c"]) == [None, 1.0, 0.5]
    assert [type(v) for v in returning([1, 2])(completions=["a", "b"])] == [float, float]
    with pytest.raises(ValueError, match="reward 'fixed' returned 1 values for 2 completions"):
        returning([1.0])(completions=["a", "b"])
    for bad, shown in [("x", "'x'"), (float("nan"), "nan"), (math.inf, "inf"), (True, "True"), ([1.0], r"\[1.0\]")]:
        with pytest.raises(ValueError, match=rf"reward 'fixed' returned {shown} at index 1: need a finite number"):
            returning([0.0, bad])(completions=["a", "b"])
    assert Reward(returning([1.0])).__name__ == "fixed"  # wrapping twice keeps the name


def test_reward_model(tmp_path):
    torch.manual_seed(0)
    model = MiniMindForSequenceClassification(tiny_config(num_labels=1)).eval()
    tokenizer = load_tokenizer()
    folder = tmp_path / "tiny-rm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    reward = get_reward_funcs([str(folder)], **{str(folder): {"batch_size": 2}})[0]
    assert reward.__name__ == "tiny-rm" and reward.columns == ()
    question = [{"role": "user", "content": "What is 7 + 5?"}]
    prompts = [question, question, "Q: 7 + 5?\nA:"]
    completions = [said("12"), said("<think>\n7 + 5 is 12\n</think>\nIt is 12, the sum of 7 and 5."), " 12"]
    scores = reward(prompts=prompts, completions=completions)
    assert len(scores) == 3 and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert len(set(scores)) == 3

    texts = [tokenizer.apply_chat_template(question + c, tokenize=False) for c in completions[:2]]
    texts.append(prompts[2] + " 12")
    assert texts[0].endswith("<|im_start|>assistant\n12<|im_end|>\n")
    direct = []
    with torch.no_grad():
        for text in texts:
            direct.append(model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item())
    assert scores == pytest.approx(direct, abs=1e-5)  # padded batches of 2 score as the model does one at a time
    # the string completions TRL's text path and the effect harness pass score the same
    assert reward(prompts=[question], completions=["12"]) == pytest.approx(scores[:1], abs=1e-5)

    two = tmp_path / "two-labels"
    MiniMindForSequenceClassification(tiny_config(num_labels=2)).save_pretrained(two)
    tokenizer.save_pretrained(two)
    with pytest.raises(ValueError, match="num_labels is 2, need 1"):
        resolve_reward(str(two))
