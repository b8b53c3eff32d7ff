"""ferlab: facial expression recognition toolkit."""

from .classifier import Classifier, load_model
from .config import TrainConfig
from .data import EMOTIONS, DataError, load_dataset
from .models import create_model, list_models
from .predict import Predictor
from .train import train

__version__ = "0.1.0"

__all__ = [
    "EMOTIONS",
    "Classifier",
    "DataError",
    "Predictor",
    "TrainConfig",
    "__version__",
    "create_model",
    "list_models",
    "load_dataset",
    "load_model",
    "train",
]
