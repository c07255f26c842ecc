"""MiniMind -> an ollama model folder: a GGUF file and a Modelfile whose Go-template TEMPLATE renders what the
package's Jinja chat template (`minimind_hf/assets/chat_templates/minimind.jinja`) renders.

ollama executes TEMPLATE with `.Messages` (`Role`, `Content`, `Thinking`, `ToolCalls[].Function.{Name,Arguments}`),
`.Tools`, `.Think` and `.IsThinkSet`; it merges consecutive messages of one role except tool results. Differences
that cannot be avoided: ollama writes tool JSON compactly (`{"a":1}` where Jinja's `tojson` writes `{"a": 1}`), and
Jinja strips newlines around reasoning text. A conversation ending in an assistant message is continued (ollama's
convention) instead of getting a new generation prompt.

Build and run where ollama is installed: `ollama create minimind -f Modelfile && ollama run minimind`.
"""

import json
import os
from pathlib import Path

from .common import ConversionError, atomic_output, resolve_source
from .gguf_export import export_gguf

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"
STOP_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# Upstream MiniMind's chat defaults; a source folder's generation_config.json overrides them.
DEFAULT_SAMPLING = {"temperature": 0.85, "top_p": 0.85, "top_k": 0, "repeat_penalty": 1.0}
GENERATION_CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
}

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_EPILOGUE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)


def ollama_template(default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The Go template equivalent to MiniMind's ChatML template.

    Args:
        default_system: system prompt used when the conversation has no system message and no tools (MiniMind2);
            `None` or `""` for none (minimind-3).
    """
    default = f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    return (
        # The first system message (if any) heads the prompt; later system messages render as their own turns.
        '{{ $system := "" }}{{ $hasSystem := false }}'
        '{{ with .Messages }}{{ if eq (index . 0).Role "system" }}'
        "{{ $hasSystem = true }}{{ $system = (index . 0).Content }}{{ end }}{{ end }}"
        "{{ if .Tools }}<|im_start|>system\n"
        "{{ if $system }}{{ $system }}\n\n{{ end }}"
        f"{TOOLS_PREAMBLE}"
        "{{ range .Tools }}\n{{ json . }}{{ end }}"
        f"{TOOLS_EPILOGUE}"
        "{{ else if $hasSystem }}<|im_start|>system\n{{ $system }}<|im_end|>\n"
        f"{default}"
        "{{ end }}"
        '{{ $prev := "" }}'
        "{{ range $i, $m := .Messages }}"
        "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{ if or (eq $m.Role "user") (and (eq $m.Role "system") (gt $i 0)) }}'
        "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n"
        '{{ else if eq $m.Role "assistant" }}<|im_start|>assistant\n'
        "{{ if $m.Thinking }}<think>\n{{ $m.Thinking }}\n</think>\n\n{{ end }}"
        "{{ $m.Content }}"
        "{{ range $j, $call := $m.ToolCalls }}{{ if or $m.Content $j }}\n{{ end }}"
        '<tool_call>\n{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}\n'
        "</tool_call>{{ end }}"
        "{{ if not $last }}<|im_end|>\n{{ end }}"
        '{{ else if eq $m.Role "tool" }}'
        '{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
        "\n<tool_response>\n{{ $m.Content }}\n</tool_response>"
        '{{ if or $last (ne (index (slice $.Messages $i) 1).Role "tool") }}<|im_end|>\n{{ end }}'
        "{{ end }}"
        "{{ $prev = $m.Role }}"
        '{{ if and $last (ne $m.Role "assistant") }}<|im_start|>assistant\n'
        "{{ if $.IsThinkSet }}{{ if $.Think }}<think>\n{{ else }}<think>\n\n</think>\n\n{{ end }}{{ end }}"
        "{{ end }}"
        "{{ end }}"
    )


def sampling_parameters(folder: Path | None) -> dict:
    """MiniMind's chat sampling defaults, overridden by a source folder's generation_config.json."""
    params = dict(DEFAULT_SAMPLING)
    path = folder / "generation_config.json" if folder else None
    if path and path.is_file():
        generation = json.loads(path.read_text())
        for key, name in GENERATION_CONFIG_KEYS.items():
            if generation.get(key) is not None:
                params[name] = generation[key]
    return params


def modelfile_text(
    gguf_name: str,
    default_system: str | None = DEFAULT_SYSTEM_PROMPT,
    parameters: dict | None = None,
    num_ctx: int | None = None,
) -> str:
    """Modelfile for a GGUF file lying next to it."""
    template = ollama_template(default_system)
    if '"""' in template:
        raise ConversionError('ollama: the TEMPLATE contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    for name, value in (parameters or DEFAULT_SAMPLING).items():
        lines.append(f"PARAMETER {name} {value}")
    return "\n".join(lines) + "\n"


def export_ollama(
    src,
    dst: str | os.PathLike,
    outtype: str = "q8_0",
    tokenizer=None,
    default_system: str | None = DEFAULT_SYSTEM_PROMPT,
    num_ctx: int = 4096,
    overwrite: bool = False,
) -> Path:
    """Write `dst/` with `model-<outtype>.gguf` and a `Modelfile` for `ollama create`.

    Args:
        src: MiniMind folder or model.
        dst: output folder (written to a temporary folder and renamed when complete).
        outtype: GGUF weight type (`f32`, `f16`, `bf16`, `q8_0`).
        tokenizer: tokenizer object or folder (defaults to the source folder's).
        default_system: system prompt when the conversation has none and no tools (`None` for minimind-3 style).
        num_ctx: ollama's context window, capped at the model's `max_position_embeddings`.
    """
    config, _, folder = resolve_source(src)
    gguf_name = f"model-{outtype}.gguf"
    with atomic_output(dst, overwrite=overwrite) as out:
        out.mkdir()
        export_gguf(src, out / gguf_name, outtype=outtype, tokenizer=tokenizer)
        text = modelfile_text(
            gguf_name,
            default_system=default_system,
            parameters=sampling_parameters(folder),
            num_ctx=min(num_ctx, config.max_position_embeddings),
        )
        (out / "Modelfile").write_text(text, encoding="utf-8")
    return Path(dst)
