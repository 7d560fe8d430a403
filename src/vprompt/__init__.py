"""vprompt: adapt frozen pretrained vision models with activation prompts, VAPT and every PETL baseline."""

from ._version import __version__
from .backbones import Backbone, Site, WeightsUnavailableError
from .backbones import create_backbone as backbone
from .engine import TrainConfig, evaluate_run, load_run, predict, train
from .methods import METHODS, MethodNotApplicable
from .model import TunedModel, attach, load_adapter

__all__ = [
    "METHODS",
    "Backbone",
    "MethodNotApplicable",
    "Site",
    "TrainConfig",
    "TunedModel",
    "WeightsUnavailableError",
    "__version__",
    "attach",
    "backbone",
    "evaluate_run",
    "load_adapter",
    "load_run",
    "predict",
    "train",
]
