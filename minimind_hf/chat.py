"""Chat with a MiniMind checkpoint in the terminal: any stage's output folder, or a PEFT (LoRA) adapter folder.

    python -m minimind_hf.chat --model outputs/tiny/sft
    python -m minimind_hf.chat --model outputs/tiny/sft --think on --temperature 0.7 --top_p 0.9
    python -m minimind_hf.chat --model outputs/tiny/sft --greedy --prompt "你好" --prompt "你是谁？"
    printf '你好\\n/think on\\n1+1=?\\n' | python -m minimind_hf.chat --model outputs/tiny/sft --greedy
    python -m minimind_hf.chat --model outputs/tiny/pretrain --raw --prompt "The capital of"

Replies stream as they are generated (transformers' `TextIteratorStreamer` fed by `model.generate` in a thread) and the
conversation is kept as multi-turn history rendered by the tokenizer's chat template (the shipped MiniMind template
when the folder has none). The tokenizer comes from the model folder, or from the shipped one when the folder has no
tokenizer files.

Commands typed instead of a message:
    /clear            forget the conversation (the system prompt stays)
    /think on|off|auto  open a `<think>` block after the generation prompt (on), add an empty closed one (off), or
                      add nothing and let the model decide (auto, the default); passed to the template as
                      `enable_thinking`
    /system TEXT      set the system prompt (`/system` alone restores the template's default)
    /exit             quit (also Ctrl-D); Ctrl-C stops the reply being generated

Non-interactive use: each `--prompt` is one user turn of the same conversation; without `--prompt`, when standard
input is not a terminal, every line of it is a message or a command. Only the replies go to standard output, each
followed by a newline; command acknowledgements go to standard error.

Thinking display: reasoning (`<think>` ... `</think>`, tags included) is dimmed when standard output is a terminal
(and `NO_COLOR` is unset); otherwise the reply is written exactly as generated, so pipes and scripts see the raw text.
When the template opened the `<think>` block (thinking on), the reply starts inside it without the opening tag.
A reply's reasoning is kept in the history as `reasoning_content`, so the template re-renders it as generated.

`--raw` is for pretrained (not chat-tuned) checkpoints: no chat template and no history; each prompt is continued
from `bos + text`, the pretraining format.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    set_seed,
)
from transformers.utils import logging as hf_logging

from .chat_templates import get_chat_template
from .tokenization import load_tokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"
DIM, RESET = "\033[2m", "\033[0m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_THINK_MODES = {"on": True, "off": False, "auto": None}


def split_reasoning(reply: str) -> dict[str, str]:
    """Splits an assistant reply into the message fields the chat template renders.

    `"<think>\\nR\\n</think>\\n\\nA"` becomes `{"reasoning_content": "R", "content": "A"}`; a reply without a closed
    think block is all `content`.
    """
    head, sep, answer = reply.partition(THINK_CLOSE)
    if not sep or THINK_OPEN not in head:
        return {"content": reply}
    reasoning = head.split(THINK_OPEN, 1)[1]
    return {"reasoning_content": reasoning.strip("\n"), "content": answer.lstrip("\n")}


@dataclass
class ChatSession:
    """A conversation: the system prompt, the thinking switch and the finished turns.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Renders the conversation with its chat template.
        system (`str`, *optional*):
            System prompt; `None` lets the template use its default ("You are a helpful assistant").
        thinking (`bool`, *optional*):
            The template's `enable_thinking`: `True` opens a think block, `False` adds an empty one, `None` neither.
        raw (`bool`, *optional*, defaults to `False`):
            Continue `bos + text` without the template or history (pretrained checkpoints).
    """

    tokenizer: PreTrainedTokenizerBase
    system: str | None = None
    thinking: bool | None = None
    raw: bool = False
    history: list[dict] = field(default_factory=list)

    def messages(self, user_text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": user_text}]

    def render(self, user_text: str) -> str:
        """The exact text the model is given for the next reply to `user_text`."""
        if self.raw:
            return (self.tokenizer.bos_token or "") + user_text
        kwargs = {} if self.thinking is None else {"enable_thinking": self.thinking}
        return self.tokenizer.apply_chat_template(
            self.messages(user_text), tokenize=False, add_generation_prompt=True, **kwargs
        )

    def add_exchange(self, user_text: str, prompt: str, reply: str) -> None:
        """Records a finished turn. `prompt` is what [`render`] returned: any think block the template opened after
        the generation prompt belongs to the reply, so the re-rendered history matches what was generated."""
        if self.raw:
            return
        prefix = prompt.rsplit(ASSISTANT_HEADER, 1)[1] if ASSISTANT_HEADER in prompt else ""
        self.history += [
            {"role": "user", "content": user_text},
            {"role": "assistant", **split_reasoning(prefix + reply)},
        ]

    def command(self, line: str) -> str | None:
        """Applies a `/command`; returns an acknowledgement, or `None` for `/exit`. Raises `ValueError` if unknown."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/exit":
            return None
        if name == "/clear":
            self.history.clear()
            return "history cleared"
        if name == "/think" and arg in _THINK_MODES:
            self.thinking = _THINK_MODES[arg]
            return f"thinking {arg}"
        if name == "/system":
            self.system = arg or None
            return f"system prompt: {arg}" if arg else "system prompt: template default"
        raise ValueError(f"unknown command {line.strip()!r}; try /clear, /think on|off|auto, /system TEXT, /exit")


class _StopOnEvent(StoppingCriteria):
    """Stops `generate` once `event` is set (Ctrl-C in the main thread)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    generation_kwargs: dict,
    on_text: Callable[[str], None] = lambda text: None,
) -> str:
    """Generates a reply to the rendered `prompt`, calling `on_text` with each streamed piece; returns the whole reply
    (special tokens removed). Ctrl-C ends the reply early and keeps what was generated."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    errors = []

    def generate():
        try:
            model.generate(
                **inputs,
                **generation_kwargs,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
            )
        except BaseException as error:
            errors.append(error)
            # Unblock the consumer: without the end signal the loop below would wait forever.
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    pieces = []
    try:
        for text in streamer:
            pieces.append(text)
            on_text(text)
    except KeyboardInterrupt:
        stop.set()
        for text in streamer:
            pieces.append(text)
            on_text(text)
    thread.join()
    if errors:
        raise errors[0]
    return "".join(pieces)


class ReplyWriter:
    """Writes streamed reply text; on a terminal, reasoning spans (tags included) are dimmed.

    Tags are single tokens in the shipped tokenizer, and the streamer only cuts text at spaces, newlines and CJK
    characters, so a tag never arrives split across two pieces.
    """

    def __init__(self, stream, style: bool, in_think: bool = False):
        self.stream = stream
        self.style = style
        self.in_think = in_think

    def __call__(self, text: str) -> None:
        if not self.style:
            self.stream.write(text)
        while self.style and text:
            head, tag, text = text.partition(THINK_CLOSE if self.in_think else THINK_OPEN)
            if self.in_think:
                self.stream.write(DIM + head + tag + RESET)
            else:
                self.stream.write(head)
                if tag:
                    self.stream.write(DIM + tag + RESET)
            if tag:
                self.in_think = not self.in_think
        self.stream.flush()


def load_model_and_tokenizer(
    model_dir: str | os.PathLike, device: str = "cpu", dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a checkpoint folder (or a PEFT adapter folder, merged into its base model) and its tokenizer.

    The tokenizer is the folder's own; for an adapter folder without one, the base model's; otherwise the shipped
    MiniMind tokenizer. A tokenizer without a chat template gets the shipped MiniMind template.
    """
    path = Path(model_dir)
    torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
    tokenizer_dirs = [path]
    if (path / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        # PeftModel on an explicitly causal-LM base, rather than AutoPeftModel, which infers the base class from the
        # adapter config and checks the Hub for a tokenizer.
        base_path = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype)
        tokenizer_dirs.append(Path(base_path))
        # Merging removes the adapter indirection from every decoding step; the merged weights match within 3e-7.
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    model.to(device).eval()
    found = next((d for d in tokenizer_dirs if any((d / name).exists() for name in _TOKENIZER_FILES)), None)
    tokenizer = AutoTokenizer.from_pretrained(str(found)) if found else load_tokenizer()
    if not tokenizer.chat_template:
        tokenizer.chat_template = get_chat_template()
    return model, tokenizer


def generation_kwargs_from_args(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> dict:
    """`generate` arguments for the sampling flags; greedy decoding gets no sampling knobs (they would only warn)."""
    kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "repetition_penalty": args.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if args.do_sample:
        kwargs.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    return kwargs


def _interactive_lines() -> Iterable[str]:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m minimind_hf.chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="checkpoint folder (any stage) or PEFT adapter folder")
    parser.add_argument("--prompt", action="append", help="a user turn (repeat for several turns); then exit")
    parser.add_argument("--system", help="system prompt (default: the chat template's)")
    parser.add_argument("--think", choices=list(_THINK_MODES), default="auto", help="initial thinking switch")
    parser.add_argument("--raw", action="store_true", help="continue text without chat template (pretrain models)")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--do_sample", dest="do_sample", action="store_true", default=True, help="sample (default)")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.85)
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--top_k", type=int, default=50, help="0 disables top-k filtering")
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="seed for sampling (default: not seeded)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: the checkpoint's dtype")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    if args.seed is not None:
        set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    session = ChatSession(tokenizer, system=args.system, thinking=_THINK_MODES[args.think], raw=args.raw)
    generation_kwargs = generation_kwargs_from_args(args, tokenizer)
    style = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    if args.prompt:
        lines = args.prompt
    elif sys.stdin.isatty():
        lines = _interactive_lines()
    else:
        lines = (line.rstrip("\n") for line in sys.stdin)

    try:
        for line in lines:
            if not line.strip():
                continue
            if line.startswith("/"):
                try:
                    message = session.command(line)
                except ValueError as error:
                    print(error, file=sys.stderr)
                    continue
                if message is None:
                    break
                print(message, file=sys.stderr)
                continue
            prompt = session.render(line)
            writer = ReplyWriter(sys.stdout, style, in_think=prompt.endswith(THINK_OPEN + "\n"))
            reply = stream_reply(model, tokenizer, prompt, generation_kwargs, writer)
            writer("\n")
            session.add_exchange(line, prompt, reply)
    except KeyboardInterrupt:
        # Ctrl-C while waiting for input ends the chat (during a reply it only stops the reply).
        print(file=sys.stderr)


if __name__ == "__main__":
    main()
