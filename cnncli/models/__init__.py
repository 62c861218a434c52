"""Model families and the registry. Models know nothing of data or training."""

from cnncli.models.registry import ModelSpec, create_model, get_spec, list_models, minimum_input_size

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "minimum_input_size"]
