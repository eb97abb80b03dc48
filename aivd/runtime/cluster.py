"""Start the application: on a local Ray started here, or on a running cluster joined with its address."""

from __future__ import annotations

from pathlib import Path

import ray
from ray import serve
from ray.serve.config import HTTPOptions, ProxyLocation
from sqlalchemy.engine import make_url

from aivd.auth.web import Access, refuse_open_bind
from aivd.review import ReviewStore
from aivd.runtime.app import build_app
from aivd.runtime.config import ClusterConfig

APP_NAME = "aivd"


def deploy(config: ClusterConfig, address: str | None = None, insecure: bool = False) -> str:
    """Deploy (or redeploy) the app and return its base URL. `address=None` starts a local Ray (or reuses the one
    this process already started); "auto" or "ray://..." joins a cluster started with `ray start`. AccessError,
    before Ray starts, for a non-loopback host without API keys (config.keys_db), unless `insecure`."""
    if config.reviews_db is not None:  # opened in the updater's Ray worker, whose working folder is not this one
        reviews_db = _anchored(config.reviews_db)
        config = config.model_copy(update={"reviews_db": reviews_db})
        with ReviewStore(reviews_db):  # a database that cannot be opened is one StoreError line, before Ray starts
            pass
    if config.keys_db is None:
        refuse_open_bind(config.host, None, insecure)
    else:
        keys_db = _anchored(config.keys_db)
        config = config.model_copy(update={"keys_db": keys_db})
        with Access.from_db(keys_db, people=False) as access:
            refuse_open_bind(config.host, access, insecure)
    if not ray.is_initialized():
        # "local" starts a fresh Ray even when another one runs on this machine; plain None would join that one.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    # One HTTP proxy, on the head: on one machine several Ray nodes would otherwise fight over the port.
    serve.start(http_options=HTTPOptions(host=config.host, port=config.port), proxy_location=ProxyLocation.HeadOnly)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def _anchored(url: str) -> str:
    """A SQLite URL with a relative path made absolute: the ingress replica runs in a Ray worker whose working
    folder is not this process's."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:" or Path(parsed.database).is_absolute():
        return url
    return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)


def shutdown() -> None:
    serve.shutdown()
    ray.shutdown()
