"""The only place that resolves, loads and fingerprints models."""

from skillforge.model.fingerprint import Fingerprint, fingerprint_model
from skillforge.model.loader import LoadedModel, load_model, resolve_model_path

__all__ = ["Fingerprint", "LoadedModel", "fingerprint_model", "load_model", "resolve_model_path"]
