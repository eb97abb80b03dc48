"""`aivd serve`: the whole pipeline on Ray Serve (`--config cluster.yaml`), the cloud tier alone (`cloud`), or the
operator console (`console`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

serve_app = typer.Typer(help="Run aivd's services.", invoke_without_command=True)


@serve_app.callback()
def cluster(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", dir_okay=False, help="cluster.yaml: node classes, replicas, policy, weights (docs/runtime.md)."),
    address: Optional[str] = typer.Option(None, help="Join a running Ray cluster ('auto', or ray://HEAD:10001). Default: start a local Ray."),
    policy: Optional[str] = typer.Option(None, help="Override the config's routing policy (aivd, ect, jsq, p2c, rr, sra, random, ray)."),
    port: Optional[int] = typer.Option(None, min=1, max=65535, help="Override the config's HTTP port."),
    db: Optional[str] = typer.Option(
        None, "--db", envvar="AIVD_DB", help="Override the config's keys_db: the result database holding API keys (`aivd keys create`)."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback host without API keys."),
) -> None:
    """Serve the edge-cloud pipeline on Ray Serve: POST /v1/inspect, /v1/inspect/batch, GET /healthz, /v1/router, /docs.
    With API keys (--db or keys_db), every endpoint but /healthz needs one."""
    if ctx.invoked_subcommand:
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    import signal
    import threading

    from aivd.runtime.config import ConfigError, load_cluster_config

    try:
        settings = load_cluster_config(config)
        overrides = {k: v for k, v in (("policy", policy), ("port", port), ("keys_db", db)) if v is not None}
        if overrides:
            settings = type(settings).model_validate({**settings.model_dump(), **overrides})
    except (ConfigError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    from aivd.core.errors import AivdError
    from aivd.runtime.cluster import deploy, shutdown

    try:
        url = deploy(settings, address, insecure)
    except AivdError as error:  # refused before Ray starts: a public host without keys, an unreadable keys database
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"aivd is serving at {url} (policy {settings.policy}, {settings.edge_replicas} edge replicas); Ctrl-C stops it")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()


TLS_CERT = typer.Option(None, "--tls-cert", exists=True, dir_okay=False, help="PEM certificate: serve HTTPS (with --tls-key).")
TLS_KEY = typer.Option(None, "--tls-key", exists=True, dir_okay=False, help="PEM private key of --tls-cert.")


def check_tls(tls_cert: Optional[Path], tls_key: Optional[Path]) -> None:
    """Exit with one error line unless the certificate and key are both given and fit together, or neither is."""
    if (tls_cert is None) != (tls_key is None):
        typer.echo("error: HTTPS needs both --tls-cert and --tls-key", err=True)
        raise typer.Exit(2)
    if tls_cert is not None:
        import ssl

        try:  # here rather than in uvicorn's startup, which would end in a traceback
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert, tls_key)
        except ssl.SSLError as error:
            typer.echo(f"error: cannot use {tls_cert} with {tls_key} for HTTPS: {error}", err=True)
            raise typer.Exit(2) from None


@serve_app.command("cloud")
def cloud(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8700, min=0, max=65535, help="TCP port; 0 picks a free one."),
    model: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False, help="Crop classifier ONNX (from `aivd train classifier`). Default: built-in."),
    knowledge: Optional[Path] = typer.Option(None, help="Defect knowledge-base YAML with the classifier's classes. Default: DeepPCB's."),
    pcb_facts: bool = typer.Option(
        True, "--pcb-facts/--no-pcb-facts", help="Measure copper and conductors in regions with a template (PCB deployments)."),
    max_body_mb: float = typer.Option(16.0, min=0.001, help="Largest request body in MiB; larger get 413 while being received."),
    max_regions: int = typer.Option(512, min=1, help="Most regions per request; more get 422."),
    max_pixels: int = typer.Option(16_000_000, min=1, help="Most crop and template pixels per request; more get 422."),
    request_timeout: float = typer.Option(60.0, min=0.1, help="Seconds a request may wait and run; then 503."),
    read_timeout: float = typer.Option(30.0, min=0.1, help="Seconds a client has to send a whole request; then the connection is closed."),
    max_connections: int = typer.Option(4096, min=16, help="Connections at once; more are answered 503."),
    db: Optional[str] = typer.Option(
        None, "--db", envvar="AIVD_DB", help="Result database holding API keys (`aivd keys create`): once it has one, every endpoint but /healthz needs one."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback --host without API keys."),
    tls_cert: Optional[Path] = TLS_CERT,
    tls_key: Optional[Path] = TLS_KEY,
) -> None:
    """Serve the built-in cloud analyzer over HTTP: POST /v1/analyze, GET /healthz, GET /metrics, docs at /docs."""
    from contextlib import ExitStack

    from aivd.auth.web import Access, refuse_open_bind
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER, BuiltinAnalyzer
    from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE
    from aivd.cloud.service import ServiceLimits, create_app
    from aivd.core.errors import AivdError
    from aivd.serving.server import ServerSettings, serve

    check_tls(tls_cert, tls_key)
    limits = ServiceLimits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_regions=max_regions, max_pixels=max_pixels,
                           request_timeout_s=request_timeout)
    settings = ServerSettings(request_read_timeout_s=read_timeout, max_connections=max_connections, tls_cert=tls_cert, tls_key=tls_key)
    with ExitStack() as cleanup:
        try:
            # Verified keys are remembered for 60 s (argon2 takes tens of ms per check): a revoked key lasts that long.
            access = cleanup.enter_context(Access.from_db(db, people=False)) if db is not None else None
            refuse_open_bind(host, access, insecure)  # before loading the model: a refusal should be quick
            analyzer = BuiltinAnalyzer(model or BUILTIN_CLASSIFIER, knowledge or DEFAULT_KNOWLEDGE, pcb_facts=pcb_facts)
        except AivdError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        cleanup.callback(analyzer.close)
        serve(create_app(analyzer, limits, access), host, port, settings)


@serve_app.command("console")
def console(
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help="The inspection database's URL (sqlite:///out/aivd.sqlite, postgresql+psycopg://...)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface (needs a user or key, or --insecure)."),
    port: int = typer.Option(8090, min=0, max=65535, help="TCP port; 0 picks a free one."),
    model_store: Optional[Path] = typer.Option(
        None, "--model-store", file_okay=False, help="The edge-model store (`aivd models`): /models shows it, admins promote and roll back."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="An `aivd serve --config` ingress URL: the live view shows its /v1/router."),
    runtime_key: Optional[str] = typer.Option(
        None, "--runtime-key", envvar="AIVD_RUNTIME_KEY", show_default=False,
        help="API key for --runtime (a viewer's); better from $AIVD_RUNTIME_KEY, which other users cannot read in the process list."),
    metrics: list[str] = typer.Option(
        [], "--metrics", help="A live run's Prometheus metrics (`aivd inspect|watch --metrics-port P`: http://HOST:P/); the live "
                             "view shows its drift state and model. Repeat for several runs or edge nodes."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback --host with no user or key configured."),
    tls_cert: Optional[Path] = TLS_CERT,
    tls_key: Optional[Path] = TLS_KEY,
) -> None:
    """The operator console: live view, images, runs, review queue, model versions and audit log, with a JSON API
    under /api/ (docs/console.md)."""
    from contextlib import ExitStack

    from aivd.auth.web import Access, refuse_open_bind
    from aivd.cli.ui import fail
    from aivd.console import build_console_app
    from aivd.core.errors import AivdError
    from aivd.serving.server import ServerSettings, serve

    check_tls(tls_cert, tls_key)
    if model_store is not None and not (model_store / "versions").is_dir():
        raise fail(f"{model_store}: not a model store (no versions/ folder)")
    with ExitStack() as cleanup:
        try:
            access = cleanup.enter_context(Access.from_db(db))
            refuse_open_bind(host, access, insecure)
            app = build_console_app(db, access, model_store=model_store, runtime_url=runtime, runtime_key=runtime_key,
                                    metrics_urls=metrics)
        except AivdError as error:
            raise fail(str(error)) from None
        serve(app, host, port, ServerSettings(tls_cert=tls_cert, tls_key=tls_key))
