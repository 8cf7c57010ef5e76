"""Recognizer families and their registry. Importing this package registers every family."""

from models.registry import create_model, get_spec, list_models, register_model
from models.spec import VariantSpec

# Importing a family module registers its builders.
from models import attention_lstm, c3d_vll, full_video, ms3d  # isort: skip

__all__ = [
    "VariantSpec",
    "attention_lstm",
    "c3d_vll",
    "create_model",
    "full_video",
    "get_spec",
    "list_models",
    "ms3d",
    "register_model",
]
