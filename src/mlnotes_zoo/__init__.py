"""mlnotes-zoo: the architectures of a set of deep-learning study notes as plain PyTorch modules."""

from mlnotes_zoo.checkpoint import load_checkpoint
from mlnotes_zoo.registry import create_model, list_models, register_model
from mlnotes_zoo.weights import export

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "register_model", "load_checkpoint", "export",
           "__version__"]
