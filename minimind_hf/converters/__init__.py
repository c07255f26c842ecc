"""Converters: upstream MiniMind checkpoints in; native transformers/vLLM folders, GGUF, ollama and Hub folders out.

Every converter writes to a temporary path next to its target and renames it only when complete, and raises one
`ConversionError` naming the tensor, shape or config field at fault (and, for a target that cannot represent the
model exactly, why). Command-line entry points live in `convert/`.
"""

from .common import ConversionError, atomic_output, load_minimind
from .gguf_export import export_gguf
from .hf_native import export_native

__all__ = ["ConversionError", "atomic_output", "export_gguf", "export_native", "load_minimind"]
