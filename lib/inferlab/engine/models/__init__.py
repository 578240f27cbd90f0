"""The model architectures the engine runs, by Hugging Face ``model_type``."""

from inferlab.engine.models.llama import LlamaForCausalLM

MODEL_CLASSES = {"llama": LlamaForCausalLM, "mistral": LlamaForCausalLM, "qwen2": LlamaForCausalLM}

__all__ = ["MODEL_CLASSES", "LlamaForCausalLM"]
