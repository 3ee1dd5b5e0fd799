"""The only code that touches SQLite or the image directory."""

from gateway.store.db import Store, open_store

__all__ = ["Store", "open_store"]
