"""Property-based fuzzing (hypothesis) of the JSONL readers' validation and of the shipped chat template: odd roles,
empty contents, nested and ill-formed tool calls, huge and non-ASCII strings, lone surrogates, BOMs, broken lines.

Readers: `validate_jsonl` returns a count or raises a `DataValidationError` naming file, line and field, never anything
else; what it accepts fits the readers' Arrow schema. Template: rendering returns text or raises jinja2's
`TemplateError` (the template's own `raise_exception`, or an undefined attribute); valid conversations keep every
message's content verbatim and round-trip through the tokenizer. Deterministic (`derandomize=True`)."""

import itertools
import json
import tempfile
from pathlib import Path

import jinja2
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minimind_hf.data import FEATURES, ROLES, DataValidationError, _iter_file, validate_jsonl
from minimind_hf.tokenization import load_tokenizer

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
KINDS = ("pretrain", "sft", "reasoning", "dpo", "rl")
SCHEMA = {"pretrain": "pretrain", "sft": "sft", "reasoning": "sft", "dpo": "dpo", "rl": "rl"}
SPECIAL_FIELDS = {"(json)", "(encoding)", "(record)", "(file)"}

# A shared temporary folder: hypothesis runs many examples per test, which function-scoped `tmp_path` cannot serve.
_TMP = tempfile.TemporaryDirectory(prefix="minimind_fuzz_")
_COUNTER = itertools.count()

# --- strings ------------------------------------------------------------------------------------------------------

SAMPLES = (
    "",
    " ",
    "\n",
    "你好，世界",
    "北京和上海天气？",
    "😀👍🏽🇨🇳",
    "مرحبا بالعالم",
    "שלום \u200f עולם",
    "e\u0301",
    "\x00\t\r\x7f",
    "<think>\nhm\n</think>\n\n<answer>42</answer>",
    "<tool_call>\n{}\n</tool_call>",
    "<|im_start|>user\n<|im_end|>",
    '{"name": "x"}',
)
CLEAN_CHARS = st.characters(blacklist_categories=("Cs",))  # no surrogates
clean_text = st.one_of(st.sampled_from(SAMPLES), st.text(CLEAN_CHARS, max_size=30))
# lone surrogates: `json.dumps(ensure_ascii=True)` writes them as `\udXXX` escapes
surrogate_text = st.builds(
    lambda a, s, b: a + s + b, clean_text, st.sampled_from(["\ud800", "\udfff", "\udc00\ud800"]), clean_text
)
huge_text = st.sampled_from(["x" * 100_000, "北" * 50_000, "😀" * 20_000])
any_text = st.one_of(clean_text, clean_text, clean_text, surrogate_text, huge_text)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(clean_text, inner, max_size=3)),
    max_leaves=8,
)


def maybe_json_string(strategy):
    """A value as is, or as its JSON string (how upstream writes tool calls, arguments and tools)."""
    return st.one_of(strategy, strategy.map(lambda v: json.dumps(v, ensure_ascii=False)))


# --- records ------------------------------------------------------------------------------------------------------

odd_roles = st.sampled_from(["", "bot", "USER", "Assistant", "function", "角色", "system "])
roles = st.one_of(st.sampled_from(ROLES), st.sampled_from(ROLES), odd_roles, json_values)
arguments = st.one_of(
    st.dictionaries(clean_text, json_values, max_size=3),
    st.dictionaries(clean_text, json_values, max_size=3).map(lambda d: json.dumps(d, ensure_ascii=False)),
    st.sampled_from(["", "{", "[1, 2]", "null", '{"a": {"b": {"c": [1, {"d": "深"}]}}}']),
    json_values,
)
tool_call = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": any_text, "arguments": arguments})}
    ),
    st.fixed_dictionaries({"name": st.one_of(clean_text, json_values)}, optional={"arguments": arguments}),
    st.fixed_dictionaries({"function": json_values}),
    json_values,
)
tool_calls = st.one_of(maybe_json_string(st.lists(tool_call, max_size=3)), json_values)
tool_schema = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": clean_text, "parameters": st.dictionaries(clean_text, json_values, max_size=2)}
        ),
    }
)
tools = st.one_of(maybe_json_string(st.lists(tool_schema, max_size=2)), json_values)
message = st.one_of(
    st.fixed_dictionaries(
        {"role": roles},
        optional={
            "content": st.one_of(any_text, any_text, st.none(), json_values),
            "reasoning_content": st.one_of(any_text, json_values),
            "tool_calls": tool_calls,
            "tools": tools,
        },
    ),
    json_values,
)
conversation = st.one_of(st.lists(message, max_size=5), st.lists(message, max_size=5), json_values)
record = st.fixed_dictionaries(
    {},
    optional={
        "text": st.one_of(any_text, any_text, json_values),
        "conversations": conversation,
        "chosen": conversation,
        "rejected": conversation,
        "gt": st.one_of(st.lists(json_scalars, max_size=3), json_values),
        "extra": json_values,
    },
)


@st.composite
def good_record(draw, kind):
    """A record of `kind`'s shape (still with fuzzed strings), so the fuzzing reaches past the structural checks."""
    text = draw(any_text)
    if kind == "pretrain":
        return {"text": draw(st.sampled_from(["x", "你好"])) + text}
    user = {"role": "user", "content": text}
    call = {"name": draw(any_text), "arguments": draw(arguments)}
    assistant = {"role": "assistant", "content": draw(any_text)}
    if draw(st.booleans()):
        assistant["tool_calls"] = json.dumps([call], ensure_ascii=False)
    if kind == "reasoning":
        assistant["content"] = f"<think>{draw(any_text)}</think>{assistant['content']}"
    turns = [user, assistant]
    if draw(st.booleans()):
        turns.insert(0, {"role": "system", "content": draw(any_text), "tools": draw(tools)})
    if kind == "dpo":
        return {"chosen": turns, "rejected": [*turns[:-1], {"role": "assistant", "content": draw(any_text)}]}
    if kind == "rl":
        return {"conversations": turns, "gt": draw(st.lists(json_scalars, max_size=2))}
    return {"conversations": turns}


def encode_line(value, ensure_ascii: bool) -> bytes:
    # ensure_ascii=False writes lone surrogates raw: "surrogatepass" turns them into invalid UTF-8 bytes
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


@st.composite
def jsonl_line(draw, kind):
    ensure_ascii = draw(st.booleans())
    choice = draw(st.integers(0, 9))
    if choice <= 3:
        return encode_line(draw(good_record(kind)), ensure_ascii)
    if choice <= 5:
        return encode_line(draw(record), ensure_ascii)
    if choice == 6:
        return encode_line(draw(json_values), ensure_ascii)
    if choice == 7:
        return draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))
    if choice == 8:
        return b"\xef\xbb\xbf" + encode_line(draw(good_record(kind)), ensure_ascii)
    return draw(
        st.one_of(
            st.binary(max_size=20),
            st.sampled_from([b"{", b"}", b"not json", b'{"text": "a"', b"[" * 100_000, b"1" * 5_000, b"\xff\xfe"]),
            st.text(CLEAN_CHARS, max_size=20).map(lambda s: s.encode()),
        )
    )


def write(content: bytes) -> Path:
    path = Path(_TMP.name) / f"{next(_COUNTER)}.jsonl"
    path.write_bytes(content)
    return path


def check_file(content: bytes, kind: str):
    """The property: a count of records that fit the Arrow schema, or a DataValidationError naming file, line and
    field. Any other exception fails the test."""
    path = write(content)
    lines = content.split(b"\n")  # how a binary file iterates
    blank = [not line.decode("utf-8", "replace").strip() for line in lines]
    try:
        count = validate_jsonl(path, kind)
    except DataValidationError as error:
        assert error.path == str(path)
        assert str(error).startswith(f"{path}:{error.line}: {error.field}: ")
        assert error.field and "\n" not in error.field and error.reason
        assert 1 <= error.line <= len(lines)
        if error.field != "(file)":
            assert not blank[error.line - 1], "the error must point at a non-blank line"
        if error.field not in SPECIAL_FIELDS:
            record = json.loads(lines[error.line - 1])
            root = error.field.split(".")[0].split("[")[0]
            assert root in record or root in ("conversations", "chosen", "rejected", "text"), error.field
        return error
    assert isinstance(count, int) and count == blank.count(False)
    features = FEATURES[SCHEMA[kind]]
    rows = [features.encode_example(row) for _, row in _iter_file(path, kind)]
    assert pa.Table.from_pylist(rows, schema=features.arrow_schema).num_rows == count
    return count


@st.composite
def jsonl_file(draw, kind):
    lines = draw(st.lists(jsonl_line(kind), max_size=4))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    return newline.join(lines) + draw(st.sampled_from([b"", newline]))


def _sft_line(assistant: dict) -> bytes:
    return json.dumps({"conversations": [{"role": "user", "content": "q"}, assistant]}).encode() + b"\n"


@st.composite
def kind_and_file(draw):
    kind = draw(st.sampled_from(KINDS))
    return kind, draw(jsonl_file(kind))


# Found by this fuzzing: before the fix in minimind_hf/data.py each escaped as a bare ValueError (an over-long integer
# literal) or RecursionError (deep nesting), or passed validation and then broke `datasets`' Arrow writer (a lone
# surrogate).
FOUND = [
    (b'{"text": "a", "n": ' + b"1" * 5_000 + b"}\n", "pretrain", "(json)"),
    (b"[" * 100_000 + b"\n", "pretrain", "(json)"),
    (b'{"text": "a\\ud800b"}\n', "pretrain", "text"),
    (b'{"text": "ok", "meta": {"k": ["\\udfff"]}}\n', "pretrain", "meta.k[0]"),
    (
        _sft_line(
            {"role": "assistant", "content": "", "tool_calls": '[{"name": "f", "arguments": "' + "[" * 5_000 + '"}]'}
        ),
        "sft",
        "conversations[1].tool_calls[0].arguments",
    ),
    (
        _sft_line(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": json.dumps([{"name": "f", "arguments": '{"a": ' + "9" * 5_000 + "}"}]),
            }
        ),
        "sft",
        "conversations[1].tool_calls[0].arguments",
    ),
    (_sft_line({"role": "assistant", "content": "\ud83d\ude00 \ud800"}), "sft", "conversations[1].content"),
]


@settings(SETTINGS, max_examples=200)
@given(case=kind_and_file())
@example(case=(FOUND[0][1], FOUND[0][0]))
@example(case=(FOUND[1][1], FOUND[1][0]))
@example(case=(FOUND[2][1], FOUND[2][0]))
@example(case=(FOUND[4][1], FOUND[4][0]))
@example(case=(FOUND[5][1], FOUND[5][0]))
def test_validate_jsonl_fuzz(case):
    kind, content = case
    check_file(content, kind)


@pytest.mark.parametrize(
    "content, kind, field",
    [
        *FOUND,
        (
            _sft_line(
                {"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": "f", "arguments": "x"}])}
            ),
            "sft",
            "conversations[1].tool_calls[0].arguments",
        ),
        (b"\n\xef\xbb\xbf" + _sft_line({"role": "assistant", "content": "a"}), "sft", "(json)"),
    ],
    ids=["huge-int", "deep-nesting", "surrogate", "nested-surrogate", "deep-arguments", "huge-int-arguments"]
    + ["surrogate-after-pair", "arguments-not-json", "bom"],
)
def test_validate_jsonl_found_examples(content, kind, field):
    error = check_file(content, kind)
    assert isinstance(error, DataValidationError) and error.field == field


def test_validated_surrogate_pairs_are_accepted():
    # a valid pair written as two escapes is one emoji, not a lone surrogate
    assert check_file(_sft_line({"role": "assistant", "content": "\ud83d\ude00"}), "sft") == 1


# --- chat template ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


template_text = st.one_of(st.sampled_from(SAMPLES), st.text(CLEAN_CHARS, max_size=40))
template_arguments = st.one_of(
    st.dictionaries(
        clean_text,
        st.recursive(
            json_scalars.filter(lambda v: not isinstance(v, str)) | template_text,
            lambda inner: st.lists(inner, max_size=2) | st.dictionaries(clean_text, inner, max_size=2),
            max_leaves=6,
        ),
        max_size=3,
    ),
    st.dictionaries(clean_text, template_text, max_size=2).map(lambda d: json.dumps(d, ensure_ascii=False)),
)
template_call = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": template_text, "arguments": template_arguments}),
        }
    ),
    st.fixed_dictionaries({"name": template_text, "arguments": template_arguments}),
)
clean_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), template_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(clean_text, inner, max_size=3)),
    max_leaves=6,
)
template_tools = st.one_of(
    st.none(),
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.just("function"),
                "function": st.fixed_dictionaries(
                    {"name": template_text, "parameters": st.dictionaries(clean_text, clean_json_values, max_size=2)}
                ),
            }
        ),
        min_size=1,
        max_size=2,
    ),
)


@st.composite
def valid_conversation(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(template_text)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(template_text)})
        assistant = {"role": "assistant", "content": draw(template_text)}
        if draw(st.booleans()):
            assistant["reasoning_content"] = draw(template_text)
        if draw(st.booleans()):
            assistant["tool_calls"] = draw(st.lists(template_call, min_size=1, max_size=2))
            messages.append(assistant)
            messages.extend({"role": "tool", "content": draw(template_text)} for _ in assistant["tool_calls"])
            messages.append({"role": "assistant", "content": draw(template_text)})
        else:
            messages.append(assistant)
    if draw(st.booleans()):
        messages.append({"role": "user", "content": draw(template_text)})
    return messages


def template_kwargs(draw):
    kwargs = {"add_generation_prompt": draw(st.booleans())}
    thinking = draw(st.sampled_from(["absent", True, False, None]))
    if thinking != "absent":
        kwargs["enable_thinking"] = thinking
    tools = draw(template_tools)
    if tools is not None:
        kwargs["tools"] = tools
    return kwargs


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_chat_template_valid_conversations(tokenizer, data):
    messages = data.draw(valid_conversation())
    kwargs = template_kwargs(data.draw)
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    assert isinstance(text, str)
    for message in messages:
        if message["role"] in ("user", "tool"):
            assert message["content"] in text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


odd_template_message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), odd_roles)},
    optional={
        "content": st.one_of(template_text, st.none(), st.integers(), st.lists(template_text, max_size=2)),
        "reasoning_content": st.one_of(template_text, st.none(), st.integers()),
        "tool_calls": st.one_of(
            st.lists(
                st.one_of(
                    template_call,
                    st.fixed_dictionaries({}, optional={"function": st.none(), "type": st.just("function")}),
                ),
                max_size=2,
            ),
            st.none(),
        ),
    },
)


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_chat_template_odd_messages_render_or_raise_template_error(tokenizer, data):
    messages = data.draw(st.lists(odd_template_message, min_size=1, max_size=5))
    kwargs = template_kwargs(data.draw)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except jinja2.TemplateError:
        return
    assert isinstance(text, str)


def test_chat_template_empty_conversation_raises_value_error(tokenizer):
    with pytest.raises(ValueError, match="empty conversation"):  # transformers' own check, before the template
        tokenizer.apply_chat_template([], tokenize=False)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": 5, "content": "x"}], "Unknown message role: 5"),
        ([{"role": "system", "content": 7}, {"role": "user", "content": "x"}], "system message needs string content"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": 5, "arguments": {}}}]}],
            "A tool call needs a string name, got: 5",
        ),
    ],
    ids=["int-role", "int-system-content", "int-tool-name"],
)
def test_chat_template_non_string_role_or_name(tokenizer, messages, message):
    """Found by the fuzzer: a non-string role, system content or tool name made the template concatenate a number
    (TypeError); the template now names what is wrong."""
    with pytest.raises(jinja2.TemplateError, match=message):
        tokenizer.apply_chat_template(messages, tokenize=False)
