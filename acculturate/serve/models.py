"""The models a server answers with: the base model and named LoRA adapters on it.

A request's ``model`` names one of them: the base model's name (or ``"none"``/``"base"``), or an
adapter's name. All adapters share the one base model through its adapter registry
(:mod:`acculturate.adapters.registry`): a batch runs inside ``registry.using(adapter)``, which
swaps module references (no weights copied) and holds the registry's lock, so batches for
different adapters take turns on the model and never mix.
"""

from __future__ import annotations

import hashlib
import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from acculturate.serve.errors import invalid, model_not_found, not_found

BASE_ALIASES = ("none", "base")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass
class ServedModel:
    """One selectable model: ``adapter`` None is the base."""

    name: str
    adapter: str | None
    version: str          # stored with every completion: which weights wrote it
    model: object
    tokenizer: object
    path: str | None = None
    registry: object | None = None  # the base model's AdapterRegistry
    key: str | None = None          # its name in the registry, if not ``adapter`` (swap_adapter)

    def active(self):
        """A context in which ``model`` runs as this adapter (or the bare base)."""
        return nullcontext() if self.registry is None else self.registry.using(self.key or self.adapter)

    @property
    def max_positions(self) -> int | None:
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)


def adapter_version(adapter_dir: str | Path) -> str:
    """A content hash of the adapter's weights and config: changes whenever the adapter does."""
    adapter_dir = Path(adapter_dir)
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = adapter_dir / name
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


class ModelPool:
    """The base model and adapters by name; adapters can be added and removed while serving.

    Args:
        model_name: what :func:`acculturate.models.load` loads (embedded name, HF dir or GGUF file).
        device, dtype: passed to ``load``.
    """

    def __init__(self, model_name: str = "smollm2-135m", device: str | None = None, dtype: str | None = None):
        from acculturate.adapters.registry import adapter_registry
        from acculturate.models import load

        from acculturate.models.kernels import use_fused_kernels

        loaded = load(model_name, device=device, dtype=dtype)
        loaded.model.eval()
        # On CUDA, Liger's fused RMSNorm, RoPE and SwiGLU (where liger-kernel is installed): a decoding
        # step at small batches is bound by its hundreds of small kernels, and these cut ~25 a layer.
        self.fused_kernels = use_fused_kernels(loaded.model)
        self.registry = adapter_registry(loaded.model)
        self.base_name = Path(model_name).name if ("/" in model_name or model_name.endswith(".gguf")) else model_name
        self.base = ServedModel(self.base_name, None, f"base:{self.base_name}", loaded.model,
                                loaded.tokenizer, str(loaded.path), self.registry)
        self._adapters: dict[str, ServedModel] = {}
        self._retired: dict[str, list[str]] = {}  # name -> registry keys a swap replaced (swap_adapter)
        self._lock = threading.Lock()       # guards _adapters (held briefly: the event loop reads it)
        self._load_lock = threading.Lock()  # one add/remove at a time (may wait for a running batch)
        # Called before an add/remove takes the registry's lock, which a running batch holds: a server
        # registers its batcher's drain() here so the batch stops admitting rows and ends soon.
        self.before_change: list = []

    def names(self) -> list[str]:
        """The base name first, then adapters in the order they were added."""
        with self._lock:
            return [self.base_name, *self._adapters]

    def get(self, name: str) -> ServedModel:
        """The model for a request's ``model`` field; 404 model_not_found if there is none."""
        if name == self.base_name or name in BASE_ALIASES:
            return self.base
        with self._lock:
            served = self._adapters.get(name)
        if served is None:
            raise model_not_found(name, self.names())
        return served

    def add_adapter(self, name: str, adapter_dir: str | Path) -> ServedModel:
        """Load the adapter in ``adapter_dir`` under ``name`` (replacing one of that name).

        Raises:
            APIError: 400 for a bad name or an adapter that does not load (the message says why).
        """
        from acculturate.adapters import AdapterError

        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in BASE_ALIASES or name == self.base_name:
            raise invalid(f"adapter name must match {_NAME.pattern} and differ from {self.base_name!r}, "
                          f"'none' and 'base'; got {name!r}", param="name")
        with self._load_lock:
            self._announce_change()
            version = f"{name}@{adapter_version(adapter_dir)}"
            if name in self.registry:
                # A new version under the same name: waits for a running batch of the old one.
                with self._lock:
                    self._adapters.pop(name, None)
                self.registry.remove(name)
            try:
                self.registry.add(name, adapter_dir)
            except (AdapterError, FileNotFoundError, ValueError) as e:
                raise invalid(f"adapter {name!r} from {adapter_dir}: {e}", param="path") from None
            served = ServedModel(name, name, version, self.base.model, self.base.tokenizer, str(adapter_dir),
                                 self.registry)
            with self._lock:
                self._adapters[name] = served
        return served

    def swap_adapter(self, name: str, adapter_dir: str | Path, version: str) -> ServedModel:
        """Hot-swap: serve ``adapter_dir`` as ``name`` from the next request on, recorded as
        ``name@version``, with no moment where ``name`` is missing.

        The new weights load under their own registry key beside the old ones; then the name points
        at them. Requests already queued keep the version they were admitted with (and record it),
        so the old version stays loaded until the next swap retires it.
        """
        from acculturate.adapters import AdapterError

        key = f"{name}@{version}"
        with self._load_lock:
            with self._lock:
                old = self._adapters.get(name)
            old_key = (old.key or old.adapter) if old is not None else None
            if old_key == key:
                return old
            self._announce_change()
            if key not in self.registry:  # a version is immutable: one loaded already is reused
                try:
                    self.registry.add(key, adapter_dir)
                except (AdapterError, FileNotFoundError, ValueError) as e:
                    raise invalid(f"adapter {name!r} version {version} from {adapter_dir}: {e}",
                                  param="path") from None
            served = ServedModel(name, name, key, self.base.model, self.base.tokenizer, str(adapter_dir),
                                 self.registry, key=key)
            with self._lock:
                self._adapters[name] = served
                stale = [k for k in self._retired.get(name, []) if k != key]
                self._retired[name] = [old_key] if old_key is not None else []
            for k in stale:  # two swaps old: no queued request can still use it
                if k in self.registry:
                    self.registry.remove(k)
        return served

    def remove_adapter(self, name: str) -> None:
        """Stop serving adapter ``name``; requests already running finish with it."""
        with self._load_lock:
            with self._lock:
                served = self._adapters.pop(name, None)
                if served is None:
                    raise not_found(f"no adapter named {name!r} is loaded", param="name")
                stale = self._retired.pop(name, [])
            self._announce_change()
            for key in [served.key or served.adapter, *stale]:
                if key in self.registry:
                    self.registry.remove(key)  # waits for a running batch of this adapter

    def _announce_change(self) -> None:
        for callback in list(self.before_change):
            callback()

    def adapters(self) -> list[dict]:
        with self._lock:
            return [{"name": s.name, "version": s.version, "path": s.path} for s in self._adapters.values()]

