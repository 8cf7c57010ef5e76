"""Recognizer families and their registry. Importing this package registers every family."""

from models._defaults import ModelDefaults
from models._registry import create_model, get_defaults, list_models, register_model

# Importing a family module registers its builders.
from models import attention_lstm, c3d_vll, full_video, ms3d  # noqa: E402,F401  isort: skip

__all__ = ["ModelDefaults", "create_model", "get_defaults", "list_models", "register_model"]
