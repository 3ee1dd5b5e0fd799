"""The only code that touches SQLite or the image directory."""

from gateway.store.db import Store
from gateway.store.startup import open_store

__all__ = ["Store", "open_store"]
