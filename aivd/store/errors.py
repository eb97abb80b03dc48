"""The result database's error, apart from the modules that raise it (the store and its schema migrations)."""

from aivd.core.errors import AivdError


class StoreError(AivdError, RuntimeError):
    """The result database cannot be opened or written."""
