"""vLLM plugin: serve MiniMind folders directly, `vllm serve <MiniMind folder>`, without converting them first.

Registered through the `vllm.general_plugins` entry point (`minimind = minimind_hf.converters.vllm_plugin:register`):
vLLM calls `register()` in every process before it reads a config. It registers the `minimind` config with
transformers' AutoConfig and `MiniMindForCausalLM` with vLLM's model registry, lazily (`vllm_model.py` imports vLLM
only when a MiniMind model is actually loaded). The model runs as the native architecture `convert/to_native.py`
would write (Llama, Qwen3, Qwen3-MoE or Mixtral with the shared expert folded in), so it is exactly as fast.
"""


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from ..configuration_minimind import MiniMindConfig

    AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
    if "MiniMindForCausalLM" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model("MiniMindForCausalLM", "minimind_hf.converters.vllm_model:MiniMindForCausalLM")
