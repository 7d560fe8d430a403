"""vprompt: adapt frozen pretrained vision models with activation prompts, VAPT and every PETL baseline."""

from .backbones import Backbone, Site, WeightsUnavailableError
from .backbones import create_backbone as backbone

__version__ = "0.1.0"

__all__ = ["Backbone", "Site", "WeightsUnavailableError", "__version__", "backbone"]
