"""The model store: versioned edge models in a folder every node can read, with CURRENT naming the one served
(`aivd models`). Apart from the results database (`aivd.store`), because the edge reads it and the database
holds inspection records: keeping them together tied the edge to the pipeline's records in an import cycle."""

from aivd.model_store.store import ModelStore, ModelStoreError

__all__ = ["ModelStore", "ModelStoreError"]
