"""minimind_hf: MiniMind as a Hugging Face ecosystem plugin.

Importing the package registers MiniMind with AutoConfig, AutoModel, AutoModelForCausalLM and
AutoModelForSequenceClassification, so `AutoModelForCausalLM.from_pretrained(folder)` works without
`trust_remote_code`.
"""

import warnings

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_minimind import PRESETS, MiniMindConfig
from .modeling_minimind import (
    MiniMindForCausalLM,
    MiniMindForSequenceClassification,
    MiniMindModel,
    MiniMindPreTrainedModel,
)

# PEFT 0.21's `PeftModel.__init__` reads `model.is_gradient_checkpointing`, which transformers 5.24 deprecates: a
# FutureWarning on every adapter load (LoRA training, DPO under PEFT, merging, chatting with an adapter folder) that
# no code of ours triggers and no user can act on. Drop this once PEFT reads `is_activation_checkpointing`.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

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
