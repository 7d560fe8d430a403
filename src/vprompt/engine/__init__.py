"""The engine: turns a backbone, a method and a dataset into a run (train, evaluate, checkpoint, resume).

summary = vprompt.train(backbone=..., method=..., data=..., output="runs/x")
vprompt.predict("runs/x", "photos/")   # [(path, [(class name, probability), ...]), ...]
"""

from .config import TrainConfig
from .inference import predict
from .run import class_names, evaluate_run, load_run, run_config, train
from .trainer import NonFiniteLossError

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "class_names",
    "evaluate_run",
    "load_run",
    "predict",
    "run_config",
    "train",
]
