"""Reading the YAML files users and the package write (configs, prompts, the knowledge base) with one-line errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError


def read_yaml_mapping(path: str | Path, error: type[Exception], example: str = "") -> dict:
    """The mapping at the top of the YAML file at `path`; raises `error` naming the file and the problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror or problem})") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        hint = f", e.g. {example}" if example else ""
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}{hint}")
    return data


def first_problem(error: ValidationError, where: str) -> str:
    """`where: field.path: message` for the first problem pydantic found, the one a user fixes first."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "file"
    return f"{where}: {field}: {first['msg']}"
