"""`MiniMindForCausalLM` for vLLM: builds the native vLLM model `hf_native.choose_target` picks for the config and
feeds it MiniMind weights renamed (and, for MiniMind2-MoE, shared-expert-folded) by `hf_native.native_state_dict`.
Imported by vLLM through `vllm_plugin.register`; never import it where vLLM is not installed."""

import copy

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mixtral import MixtralForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM

from ..configuration_minimind import MiniMindConfig
from .common import check_state_dict
from .hf_native import choose_target, native_config, native_state_dict

VLLM_CLASSES = {
    "llama": LlamaForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "mixtral": MixtralForCausalLM,
}


class MiniMindForCausalLM(LlamaForCausalLM):
    """Never instantiated itself: `__new__` returns the native vLLM model for the config (the Llama base class only
    tells vLLM's registry this is a text-generation model)."""

    def __new__(cls, *, vllm_config: VllmConfig, prefix: str = ""):
        hf_config = vllm_config.model_config.hf_config
        config = hf_config if isinstance(hf_config, MiniMindConfig) else MiniMindConfig(**hf_config.to_dict())
        target = choose_target(config)
        native = native_config(config, target)
        # The native model reads its own field names (num_local_experts, folded intermediate_size, ...).
        model_config = copy.copy(vllm_config.model_config)
        object.__setattr__(model_config, "hf_config", native)
        object.__setattr__(model_config, "hf_text_config", native)
        native_vllm_config = copy.copy(vllm_config)
        object.__setattr__(native_vllm_config, "model_config", model_config)
        model = VLLM_CLASSES[target](vllm_config=native_vllm_config, prefix=prefix)
        load_native_weights = model.load_weights

        def load_weights(weights) -> set[str]:
            state_dict: dict[str, torch.Tensor] = dict(weights)
            state_dict = check_state_dict(state_dict, config)
            return load_native_weights(native_state_dict(config, state_dict, target).items())

        model.load_weights = load_weights
        return model
