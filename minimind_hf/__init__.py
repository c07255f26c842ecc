"""minimind_hf: MiniMind as a Hugging Face ecosystem plugin.

Importing the package registers MiniMind with AutoConfig, AutoModel, AutoModelForCausalLM and
AutoModelForSequenceClassification, so `AutoModelForCausalLM.from_pretrained(folder)` works without
`trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_minimind import PRESETS, MiniMindConfig
from .modeling_minimind import (
    MiniMindForCausalLM,
    MiniMindForSequenceClassification,
    MiniMindModel,
    MiniMindPreTrainedModel,
)

AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
AutoModel.register(MiniMindConfig, MiniMindModel, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(MiniMindConfig, MiniMindForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "MiniMindConfig",
    "MiniMindForCausalLM",
    "MiniMindForSequenceClassification",
    "MiniMindModel",
    "MiniMindPreTrainedModel",
]
