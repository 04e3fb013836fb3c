"""Models: load (embedded default, HF directory, GGUF), device and dtype."""

from acculturate.models.device import pick_device, pick_dtype
from acculturate.models.loading import DEFAULT_MODEL, LoadedModel, ModelLoadError, load

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelLoadError", "load", "pick_device", "pick_dtype"]
