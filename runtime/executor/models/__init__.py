from .config import SUPPORTED_ARCHITECTURES, ModelConfig
from .llama import LlamaForCausalLM

__all__ = ["SUPPORTED_ARCHITECTURES", "LlamaForCausalLM", "ModelConfig"]
