"""Smolite for the Hugging Face stack.

Importing the package registers Smolite with the Auto classes, so `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` and `AutoTokenizer` resolve `model_type="smolite"` folders, and marks the classes for `trust_remote_code`
saving: a folder written by `save_pretrained` carries its own source files (configuration, modeling, loss and
tokenization files) and loads on machines without this package.

The model library is the four Hub-bound files (`configuration_smolite`, `modeling_smolite`, `loss_smolite`,
`tokenization_smolite`) plus the converters and `folders` (checks and checksums of model folders); the README's
"Package map" lists every module.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .configuration_smolite import SIZE_ALIASES, SIZE_PRESETS, SmoliteConfig
from .modeling_smolite import SmoliteForCausalLM, SmoliteModel, SmolitePreTrainedModel
from .tokenization_smolite import SmoliteTokenizer

__version__ = "0.1.0"

AutoConfig.register(SmoliteConfig.model_type, SmoliteConfig, exist_ok=True)
AutoModel.register(SmoliteConfig, SmoliteModel, exist_ok=True)
AutoModelForCausalLM.register(SmoliteConfig, SmoliteForCausalLM, exist_ok=True)
AutoTokenizer.register(SmoliteConfig, tokenizer_class=SmoliteTokenizer, exist_ok=True)

SmoliteConfig.register_for_auto_class()
SmoliteModel.register_for_auto_class("AutoModel")
SmoliteForCausalLM.register_for_auto_class("AutoModelForCausalLM")
SmoliteTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["SIZE_ALIASES", "SIZE_PRESETS", "SmoliteConfig", "SmoliteForCausalLM", "SmoliteModel", "SmolitePreTrainedModel", "SmoliteTokenizer", "__version__"]
