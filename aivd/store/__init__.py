"""A database of inspection runs and their results, for queries and trends across runs."""

from aivd.store.database import ResultStore, StoreError

__all__ = ["ResultStore", "StoreError"]
