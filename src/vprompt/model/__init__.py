"""The model around a method: :class:`TunedModel` (freezing, the head, counting, timm's verbs, merging),
its files, peft's format and the Hugging Face Hub. The methods themselves live in :mod:`vprompt.methods`.

model = vprompt.attach(backbone, "ap", site="block.6", shape="channel")
model.save_pretrained("run/adapter")
model = vprompt.load_adapter("run/adapter", backbone)
"""

from .hub import HubUnavailableError
from .tuned import TunedModel, attach, load_adapter

__all__ = ["HubUnavailableError", "TunedModel", "attach", "load_adapter"]
