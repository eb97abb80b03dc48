"""Start the application: on a local Ray started here, or on a running cluster joined with its address."""

from __future__ import annotations

import ray
from ray import serve
from ray.serve.config import HTTPOptions, ProxyLocation

from aivd.runtime.app import build_app
from aivd.runtime.config import ClusterConfig

APP_NAME = "aivd"


def deploy(config: ClusterConfig, address: str | None = None) -> str:
    """Deploy (or redeploy) the app and return its base URL. `address=None` starts a local Ray (or reuses the one
    this process already started); "auto" or "ray://..." joins a cluster started with `ray start`."""
    if not ray.is_initialized():
        # "local" starts a fresh Ray even when another one runs on this machine; plain None would join that one.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    # One HTTP proxy, on the head: on one machine several Ray nodes would otherwise fight over the port.
    serve.start(http_options=HTTPOptions(host=config.host, port=config.port), proxy_location=ProxyLocation.HeadOnly)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def shutdown() -> None:
    serve.shutdown()
    ray.shutdown()
