"""The stores of a Plan, built once per process on first use."""

from __future__ import annotations

import threading

from rotator.errors import ConfigError
from rotator.stores import SecretStore, StoreConfig, StoreContext, store_class


class StoreSet:
    """Builds each configured store lazily and keeps it for the life of the process."""

    def __init__(self, configs: dict[str, StoreConfig], context: StoreContext) -> None:
        self.configs = configs
        self.context = context
        self._built: dict[str, SecretStore] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> SecretStore:
        with self._lock:
            store = self._built.get(name)
            if store is None:
                try:
                    config = self.configs[name]
                except KeyError:
                    raise ConfigError(f"no store named {name!r} in schedules.yaml") from None
                store = store_class(config.type).from_config(name, config, self.context)
                self._built[name] = store
            return store

    def close(self) -> None:
        """Close every store built so far (a reloaded plan's old stores stop their timers)."""
        with self._lock:
            built, self._built = list(self._built.values()), {}
        for store in built:
            store.close()

    def check_all(self) -> None:
        """Prove every configured store answers; the error names the store that does not."""
        for name in self.configs:
            self.get(name).check()
