"""What every `aivd` command shares to talk to its user: the console, progress bars and one-line errors.

Everything printed that came from outside (paths, file names, error messages quoting them) goes through
`shown`: rich markup in a name (`b[/]_test.jpg`) would crash or restyle the line, and a newline or an ANSI
escape in a file name could forge a log line.
"""

from __future__ import annotations

import re

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)  # one error per line, never wrapped

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(text: object) -> str:
    """`text` safe to print on one line: control characters as \\xNN (\\n, \\t, \\r by name), markup escaped."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return escape(_CONTROL.sub(lambda match: named.get(match.group(), f"\\x{ord(match.group()):02x}"), str(text)))


def error_line(message: object) -> None:
    """`error: MESSAGE` on one line of the console."""
    console.print(f"[red]error:[/red] {shown(message)}", highlight=False)


def warning_line(message: object) -> None:
    """`warning: MESSAGE` on one line of the console (any thread may print)."""
    console.print(f"[yellow]warning:[/yellow] {shown(message)}", highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as one error line and return the exit to raise."""
    error_line(message)
    return typer.Exit(code)


def error_lines(message: str) -> None:
    """Each line of `message` as its own error line: a config's problems, one per line, as `aivd.config.ConfigError`
    words them (`error_line` would show them joined by a literal \\n)."""
    for line in message.splitlines():
        error_line(line)


def fail_each_line(message: str, code: int = 2) -> typer.Exit:
    """Print each line of `message` as an error line and return the exit to raise."""
    error_lines(message)
    return typer.Exit(code)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def import_extra(module: str, extras: str = "train", purpose: str = "training"):
    """aivd.MODULE, or a clear exit naming the extras to install when its dependencies are missing."""
    import importlib

    try:
        return importlib.import_module(f"aivd.{module}")
    except ImportError as error:
        names = " and ".join(f"'{name}'" for name in extras.split(","))
        plural = "s" if "," in extras else ""
        raise fail(f"{purpose} needs the {names} extra{plural} (pip install 'aivd[{extras}]'): {error}") from None
