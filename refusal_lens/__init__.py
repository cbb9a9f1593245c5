"""refusal_lens: find, test and explain the refusal direction of chat models."""

from .model import LensModel, load_model

__all__ = ["LensModel", "load_model"]
__version__ = "0.1.0"
