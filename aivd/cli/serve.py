"""`aivd serve`: run the cloud tier as an HTTP service."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

serve_app = typer.Typer(help="Run aivd's services.", no_args_is_help=True)


@serve_app.command("cloud")
def cloud(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8700, min=0, max=65535, help="TCP port; 0 picks a free one."),
    model: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="Crop classifier ONNX (from `aivd train classifier`). Default: built-in."),
    max_body_mb: float = typer.Option(32.0, min=0.001, help="Largest request body in MiB; larger get 413."),
    max_regions: int = typer.Option(512, min=1, help="Most regions per request; more get 422."),
) -> None:
    """Serve the built-in cloud analyzer over HTTP: POST /v1/analyze, GET /healthz, GET /metrics, docs at /docs."""
    import uvicorn

    from aivd.cloud.builtin import BuiltinAnalyzer
    from aivd.cloud.service import ServiceLimits, create_app
    from aivd.edge.detector import ModelError

    try:
        analyzer = BuiltinAnalyzer(model) if model else BuiltinAnalyzer()
    except ModelError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    limits = ServiceLimits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_regions=max_regions)
    try:
        uvicorn.run(create_app(analyzer, limits), host=host, port=port, log_level="info")
    finally:
        analyzer.close()
