"""hf_gpt_scratch: the GPT of "Build a Large Language Model (From Scratch)" as a transformers model.
Importing it registers the model type "gpt_scratch" with the Auto classes, and has `save_pretrained`
ship the classes' code (`auto_map`) for `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_gpt_scratch import GPTScratchConfig
from .modeling_gpt_scratch import (
    GPTScratchForCausalLM,
    GPTScratchForSequenceClassification,
    GPTScratchModel,
    GPTScratchPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(GPTScratchConfig.model_type, GPTScratchConfig)
AutoModel.register(GPTScratchConfig, GPTScratchModel)
AutoModelForCausalLM.register(GPTScratchConfig, GPTScratchForCausalLM)
AutoModelForSequenceClassification.register(GPTScratchConfig, GPTScratchForSequenceClassification)

GPTScratchConfig.register_for_auto_class()
GPTScratchModel.register_for_auto_class("AutoModel")
GPTScratchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
GPTScratchForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "GPTScratchConfig",
    "GPTScratchPreTrainedModel",
    "GPTScratchModel",
    "GPTScratchForCausalLM",
    "GPTScratchForSequenceClassification",
]
