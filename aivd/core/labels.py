"""Class vocabularies: contiguous ids used by models, names used by people and files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelMap:
    """An ordered list of class names; the model class id is the index into it."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate class names in {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def name(self, class_id: int) -> str:
        return self.names[class_id]

    def id(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r}; expected one of {', '.join(self.names)}") from None


# DeepPCB's official ids are 1..6 in this order; model ids are 0..5. Names follow the
# official submission format (evaluation/readme of the data set).
DEEPPCB_CLASSES = LabelMap(("open", "short", "mousebite", "spur", "copper", "pin-hole"))
