"""The operator console (`aivd serve console`): pages and a JSON API over the inspection database."""

from aivd.console.app import build_console_app

__all__ = ["build_console_app"]
