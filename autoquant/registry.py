"""Plugin registries: threshold methods, data readers, label formats and objectives, by name.

A :class:`Registry` maps names to plugins. The registries of autoquant's plugin points are
declared here, at the bottom layer, so that the config validates a name by asking a registry
without importing any plugin module. Each registry knows the one module that provides its
built-in plugins (its ``provider``) and imports it on the first lookup, as an entry point would:
the built-in names are known however the package was imported, and the static import graph keeps
no upward edge. A user registers a plugin the same way as the built-ins do::

    @DATA_READERS.register("tfrecord")
    class TfRecordReader(DataReader): ...
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from autoquant.errors import AutoquantError, CalibrationError, ConfigError, DataError

T = TypeVar("T")
U = TypeVar("U")


class Registry(Generic[T]):
    """Plugins of one kind by name, in registration order.

    Args:
        kind: What a plugin is, for messages (``"threshold method"``).
        error: The exception :meth:`get` raises for an unknown name.
        provider: The module whose import registers the built-in plugins; imported on the first
            lookup. None: the plugins register themselves before any lookup.
    """

    def __init__(self, kind: str, error: type[AutoquantError], provider: str | None = None) -> None:
        self.kind = kind
        self.error = error
        self._provider = provider
        self._plugins: dict[str, T] = {}
        self._loading = threading.RLock()

    def _load(self) -> None:
        """Import the provider once; other threads wait until its plugins are registered."""
        if self._provider is None:
            return
        with self._loading:  # re-entrant: the provider's own import may ask this registry
            if self._provider is not None:
                importlib.import_module(self._provider)
                self._provider = None

    def register(self, name: str) -> Callable[[U], U]:
        """Decorator registering the decorated plugin under ``name``.

        Raises:
            ValueError: ``name`` is already registered.
        """

        def decorator(plugin: U) -> U:
            self.add(name, plugin)  # type: ignore[arg-type]
            return plugin

        return decorator

    def add(self, name: str, plugin: T) -> T:
        """Register ``plugin`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._plugins:
            known = self._plugins[name]
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ValueError(
                f"{article} {self.kind} is already registered as {name!r}: {getattr(known, '__name__', repr(known))}"
            )
        self._plugins[name] = plugin
        return plugin

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a user's plugin, or one replaced in a test)."""
        self._plugins.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, plugin: T) -> Iterator[T]:
        """Register ``plugin`` for the duration of a ``with`` block."""
        self._load()
        self.add(name, plugin)
        try:
            yield plugin
        finally:
            self.remove(name)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        self._load()
        return tuple(self._plugins)

    def items(self) -> list[tuple[str, T]]:
        """``(name, plugin)`` pairs, in registration order."""
        self._load()
        return list(self._plugins.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._plugins

    def get(self, name: str) -> T:
        """The plugin registered as ``name``.

        Raises:
            AutoquantError: ``name`` is not registered (the registry's ``error`` class); the
                message lists the registered names.
        """
        self._load()
        try:
            return self._plugins[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(self._plugins)}") from None


# --- autoquant's plugin points --------------------------------------------------------------------
# Typed Any here because the plugin classes live in the layers above; each provider rebinds its
# registry with the plugin type (``METHODS: Registry[ThresholdMethod] = THRESHOLD_METHODS``).

#: ``quantization.method``: :class:`autoquant.engine.ThresholdMethod` objects.
THRESHOLD_METHODS: Registry[Any] = Registry(
    "threshold method", CalibrationError, provider="autoquant.engine._methods"
)
#: ``data.format``: :class:`autoquant.data.DataReader` subclasses, asked in this order to claim a source.
DATA_READERS: Registry[Any] = Registry("data reader", DataError, provider="autoquant.data")
#: ``data.label_format``: :class:`autoquant.data.LabelFormat` objects.
LABEL_FORMATS: Registry[Any] = Registry("label format", DataError, provider="autoquant.data._labels")
#: ``test.objective``: objective classes (``autoquant.objectives``).
OBJECTIVES: Registry[Any] = Registry("objective", ConfigError, provider="autoquant.objectives")
