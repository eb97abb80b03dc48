"""Model packs: everything one production line needs, trained by `aivd train pack` (see `aivd.packs.pack`)."""

from aivd.packs.pack import PACK_FILE, ModelPack, PackDetector, PackError, builtin_pack, load_pack

__all__ = ["PACK_FILE", "ModelPack", "PackDetector", "PackError", "builtin_pack", "load_pack"]
