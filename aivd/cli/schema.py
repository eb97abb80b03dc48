"""`aivd schema`: the JSON Schemas of the records aivd writes."""

from __future__ import annotations

from pathlib import Path

import typer

from aivd.cli.ui import console, shown


def schema(out: Path = typer.Option(Path("docs/schema"), "--out", "-o", help="Folder for the JSON Schema files.")) -> None:
    """Write the JSON Schemas of the records aivd produces (results.jsonl lines, cloud analyses)."""
    from aivd.pipeline.schemas import write_schemas

    for path in write_schemas(out):
        console.print(f"wrote {shown(path)}", highlight=False)
