"""`aivd config show|check`: the effective pipeline config, and a file's problems, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aivd.cli.pipeline_options import SET, pipeline_config, set_overrides
from aivd.cli.ui import console, error_lines, shown

config_app = typer.Typer(help="Pipeline configs: print the effective one, check a file.", no_args_is_help=True)


@config_app.command("show")
def show(
    file: Optional[Path] = typer.Argument(None, help="A pipeline config YAML. Default: the built-in defaults."),
    set_values: Optional[list[str]] = SET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print the config a run would use: the file's values, the defaults for the rest, --set laid over them.
    Passwords in URLs are shown as ***."""
    import json

    import yaml

    shown = pipeline_config(file, set_overrides(set_values)).shown()
    print(json.dumps(shown, indent=2) if as_json else yaml.safe_dump(shown, sort_keys=False), end="" if not as_json else "\n")


@config_app.command("check")
def check(files: list[Path] = typer.Argument(..., help="Pipeline config YAML files.")) -> None:
    """Validate each file without running anything: one line per problem, exit 2 if any file has one."""
    from aivd.config import ConfigError, build_config

    failed = False
    for file in files:
        try:
            build_config(file)
        except ConfigError as error:
            failed = True
            error_lines(str(error))
            continue
        console.print(f"{shown(file)}: ok", highlight=False)
    if failed:
        raise typer.Exit(2)
