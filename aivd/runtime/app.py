"""The Ray Serve application: HTTP ingress -> edge detector replicas (routed by our policy) -> cloud analyzer.

Every replica builds its part of the cluster config's `pipeline` with the factory that `aivd inspect --config`
uses (`aivd.pipeline.factory`), so a setting means the same on Ray as on one machine. Each edge replica runs an
`EdgeCloudPipeline`: `propose` (detection, its own offloading stage, crops) on its emulated device, then
`complete`, whose analyzer is the cloud deployment reached through a handle. The cloud deployment runs the
configured backend (builtin, http, openai, transformers) on the regions of many edge requests, batched with
`@serve.batch`. The ingress only forwards images and resends a request whose edge replica died. Every deployment
has a `check_health` (see `aivd.runtime.health`) and the edge and router report metrics through Ray Serve's API.

No `from __future__ import annotations` here: FastAPI reads the ingress's parameter types at run time.
"""


import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

import aivd
from aivd.auth.web import LOCAL, Access, Principal
from aivd.cloud.analyzer import Analyses, AnalyzerError, RemoteAnalyzer
from aivd.core import Region
from aivd.data.images import ImageError, check_pair, decode_gray
from aivd.edge.hot_swap import hot_swapping
from aivd.pipeline.engine import ImageResult
from aivd.pipeline.factory import build_analyzer, build_pipeline, edge_classes
from aivd.pipeline.inspect import inspection_record
from aivd.runtime import telemetry
from aivd.runtime.config import RAY_DEFAULT_ROUTER, ClusterConfig, EdgeNodeClass
from aivd.runtime.emulation import EmulatedNode
from aivd.runtime.health import HandleHealth
from aivd.schema.records import InspectionRecord
from aivd.serving.body_limit import BodyLimit

MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # one image or template
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # one request, counted while it is received (see BodyLimit)
MAX_BATCH_IMAGES = 32
# Starlette's answer to a body that is not multipart/form-data it can parse; documented so that clients know it.
UNREADABLE_FORM: dict[int | str, dict[str, Any]] = {400: {"description": "the body is not readable multipart/form-data"}}
NODE_CLASS_RESOURCE = "aivd_class_"  # a Ray node offering aivd_class_<name> hosts edge replicas of that class


# The backends whose model runs in the cloud replica: one call on the regions of many edge requests is what batching
# is for. The others answer each region in a request of its own (openai) or in the service's batches (http).
BATCHED_BACKENDS = ("builtin", "transformers")


class CloudHandleAnalyzer:
    """The `Analyzer` interface over the cloud deployment's handle, for `EdgeCloudPipeline.complete`."""

    def __init__(self, handle: DeploymentHandle, health: HandleHealth, described: dict, timeout_s: float) -> None:
        self.handle, self.health = handle, health
        self.name = described["name"]
        if described["proposal_threshold"] is not None:  # else the engine proposes from the edge's own threshold
            self.proposal_threshold = described["proposal_threshold"]
        self.timeout_s = timeout_s

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        try:  # Ray moves the regions as objects; the bytes counted are the backend's own (HTTP to its server)
            outcome = self.handle.analyze.remote(regions).result(timeout_s=self.timeout_s)
        except Exception as error:  # any failure of the remote tier leaves the image with the edge's result
            self.health.called(error)
            raise AnalyzerError(f"cloud deployment failed: {type(error).__name__}: {error}") from error
        self.health.called(None)
        if isinstance(outcome, AnalyzerError):
            raise outcome
        return outcome

    def close(self) -> None:
        pass  # the handle belongs to the replica


@serve.deployment(name="cloud")
class CloudAnalyzer:
    """The pipeline's cloud tier (`pipeline.cloud`), built as `aivd inspect` builds it, with the edge's classes."""

    def __init__(self, config: ClusterConfig) -> None:
        analyzer = build_analyzer(config.pipeline.cloud, *edge_classes(config.pipeline.edge))
        assert analyzer is not None  # build_app deploys the cloud only for a backend other than none
        self.analyzer = analyzer
        self.batched = config.pipeline.cloud.backend in BATCHED_BACKENDS
        self.check_timeout_s = config.health_check_timeout_s / 2  # within Serve's timeout, so that our reason shows
        # Ray's stubs type @serve.batch's result as the plain method; at run time it has these setters.
        self.analyze.set_max_batch_size(config.cloud.max_batch_size)  # type: ignore[attr-defined]
        self.analyze.set_batch_wait_timeout_s(config.cloud.batch_wait_s)  # type: ignore[attr-defined]

    def describe(self) -> dict:
        return {"name": self.analyzer.name, "proposal_threshold": getattr(self.analyzer, "proposal_threshold", None)}

    async def check_health(self) -> None:
        """A backend with a server is healthy while the server answers; one in this replica, once it has loaded."""
        if isinstance(self.analyzer, RemoteAnalyzer):
            await asyncio.to_thread(self.analyzer.check, self.check_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def analyze(self, requests: list[list[Region]]) -> list[Analyses | AnalyzerError]:
        """Each edge request's analyses, or the error that stopped them. A batched backend analyses several requests'
        regions in one model call, and each request alone when that call failed, so that one image's failure is not
        its batch-mates'; a remote backend gets each request in calls of its own, at once."""
        if not self.batched:
            return list(await asyncio.gather(*(asyncio.to_thread(self._analyze, regions) for regions in requests)))
        if len(requests) > 1:
            joint = await asyncio.to_thread(self._analyze, [region for regions in requests for region in regions])
            if not isinstance(joint, AnalyzerError):
                out: list[Analyses | AnalyzerError] = []
                start = 0
                for regions in requests:  # in-process backends cost no bytes: there are none to split
                    out.append(Analyses(joint[start:start + len(regions)]))
                    start += len(regions)
                return out
        # One call at a time, as the joint one: the model is this replica's, on its one device.
        return [await asyncio.to_thread(self._analyze, regions) for regions in requests]

    def _analyze(self, regions: list[Region]) -> Analyses | AnalyzerError:
        try:
            return self.analyzer.analyze(regions)
        except AnalyzerError as error:  # a value, not raised: it is one request's answer in a batch
            return error


def _fresh_handle(deployment: str) -> Callable[[], DeploymentHandle]:
    """Makes a new handle on `deployment` of this replica's application (to tell a dead handle from a dead deployment)."""
    app_name = serve.get_replica_context().app_name
    return lambda: serve.get_deployment_handle(deployment, app_name)


def _replica_class(config: ClusterConfig) -> tuple[str, int, EdgeNodeClass]:
    """This replica's id, rank and node class: from its Ray node's `aivd_class_<name>` resource, or by rank."""
    context = serve.get_replica_context()
    replica_id = context.replica_id.unique_id
    rank = context.rank if isinstance(context.rank, int) else context.rank.rank
    if config.placement == "resources":
        node_id = ray.get_runtime_context().get_node_id()
        resources: dict[str, float] = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
        for name in resources:
            if name.startswith(NODE_CLASS_RESOURCE):
                return replica_id, rank, config.class_named(name.removeprefix(NODE_CLASS_RESOURCE))
        raise RuntimeError(f"edge replica {replica_id} runs on a Ray node without an {NODE_CLASS_RESOURCE}<name> resource")
    return replica_id, rank, config.class_for_rank(rank)


@serve.deployment(name="edge")
class EdgeNode:
    # Ray Serve awaits an async constructor; Python's typing has no such thing.
    async def __init__(self, config: ClusterConfig, cloud: DeploymentHandle | None,  # type: ignore[misc]
                       updater: DeploymentHandle | None = None) -> None:
        self.replica_id, rank, self.node_class = _replica_class(config)
        # Each replica's link draws its own trace, fixed by the config's seed and the replica's rank.
        self.emulated = EmulatedNode(self.node_class.slowdown, self.node_class.link, seed=[config.seed, rank],
                                     service_s=self.node_class.service_s, service_cv=self.node_class.service_cv,
                                     clock_start_unix=config.link_clock_start_unix)
        self.telemetry = telemetry.ReplicaTelemetry(self.node_class.name, self.emulated)
        self.metrics = telemetry.EdgeMetrics(self.node_class.name)
        self.cloud_health, remote = None, None
        if cloud is not None:
            self.cloud_health = HandleHealth(cloud, _fresh_handle("cloud"), "cloud", config.health_check_timeout_s / 3)
            remote = CloudHandleAnalyzer(cloud, self.cloud_health, await cloud.describe.remote(), config.cloud.timeout_s)
        # One ONNX thread: several replicas share this machine's cores (a real edge node would use all of its own).
        # The offloading stage is this replica's own: its budget holds over the images this replica inspects.
        self.pipeline = build_pipeline(config.pipeline, threads=1, cloud=remote)
        self._learning(updater)

    def describe(self) -> dict:
        return {"node_class": self.node_class.name, "pipeline": self.pipeline.name}

    async def check_health(self) -> None:
        """Unhealthy when the model store no longer has the version this replica serves (it follows a newly promoted
        one here first, idle or not), or when its handle on the cloud deployment is dead."""
        swapping = hot_swapping(self.pipeline.detector)
        if swapping is not None:
            await asyncio.to_thread(swapping.check)
        if self.cloud_health is not None:
            await self.cloud_health.check()

    async def inspect(self, image: bytes, template: bytes | None, image_name: str, image_id: str,
                      template_name: str | None = None) -> InspectionRecord:
        template_name = template_name or f"{image_name} (template)"
        self.telemetry.ongoing += 1
        try:
            transfer_s = await self.emulated.receive(len(image) + len(template or b""))
            started = time.perf_counter()
            try:
                test = decode_gray(image, image_name)
                reference = decode_gray(template, template_name) if template is not None else None
                if reference is not None:
                    check_pair(test, reference, image_name, template_name)
            except ImageError as error:
                outcome: ImageResult | ImageError = error
                read_ms = (time.perf_counter() - started) * 1000
            else:
                read_ms = (time.perf_counter() - started) * 1000
                proposal, service_s = await self.emulated.serve(self.pipeline.propose, test, reference, image_id)
                self.telemetry.served(service_s)
                outcome = await asyncio.to_thread(self.pipeline.complete, proposal)
                await self._teach(image_id, test, reference, outcome)
            record = inspection_record(image_name, image_id, template_name if template is not None else None,
                                       self.pipeline, outcome, read_ms)
            record.edge_node = f"{self.node_class.name}/{self.replica_id}"
            record.timings_ms["transfer"] = round(transfer_s * 1000, 2)
            self.metrics.inspected(record)
            await self.emulated.reply()
            return record
        except Exception:
            self.telemetry.errors += 1
            raise
        finally:
            self.telemetry.ongoing -= 1

    def _learning(self, updater: DeploymentHandle | None) -> None:
        """With an updater, validation images (when it says one is due) send all their regions to the cloud."""
        from aivd.collab.offload import LabelAll

        self.updater, self.full_labels = updater, False
        if updater is not None:
            self.pipeline.offloader = LabelAll(self.pipeline.offloader, lambda: self.full_labels)

    async def _teach(self, image_id: str, image, template, outcome: ImageResult) -> None:
        """Hand the inspected image to the updater (it only queues it) and keep its answer for the next image."""
        if self.updater is not None and outcome.cloud_error is None:
            self.full_labels = await self.updater.observe.remote(image_id, image, template, outcome)

    def record_routing_stats(self) -> dict:
        return self.telemetry.report()


class ReplicaAccess:
    """Who may call the ingress. Its routes are declared when this module is imported, but the keys' database is
    known only when the ingress replica starts, in a Ray actor process of its own: the replica sets `access` then.
    Without a database (`keys_db`) the ingress is open (refuse_open_bind allowed it: loopback, or --insecure)."""

    def __init__(self) -> None:
        self.access: Access | None = None
        self.bearer = HTTPBearer(auto_error=False, description="an API key from `aivd keys create`")

    def dependencies(self, role: str) -> list:
        """A route's `dependencies`, admitting requests whose key has at least `role`."""

        def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(self.bearer)) -> Principal:
            return LOCAL if self.access is None else self.access.admit(request, credentials, role)

        return [Depends(dependency)]

    def openapi(self, app: FastAPI) -> Callable[[], dict[str, Any]]:
        """`app.openapi`: FastAPI's document, without the API keys when this replica has none to ask for. Made on
        each call, since the routes are declared before the replica knows. A closure rather than a module function:
        Ray ships the ingress class with its app and this object by value, and a module function would read this
        module's own ACCESS in the replica, not the copy that the replica's __init__ sets."""

        def document() -> dict[str, Any]:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            if self.access is None:
                schema.get("components", {}).pop("securitySchemes", None)
                for operation in (operation for path in schema["paths"].values() for operation in path.values()):
                    operation.pop("security", None)
                    for status in AUTH_ERRORS:
                        operation["responses"].pop(str(status), None)
            return schema

        return document


ACCESS = ReplicaAccess()
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid API key in `Authorization: Bearer KEY`"},
    403: {"description": "the API key's role may not do this"},
    503: {"description": "the API keys cannot be checked now (their database is unreachable)"},
}

api = FastAPI(
    title="aivd inspection", version=aivd.__version__,
    description="Inspect images on the aivd cluster: each image goes to the edge node the scheduling policy picks, "
                "its candidate regions to the cloud analyzer; the answer is the image's inspection record.",
)


api.openapi = ACCESS.openapi(api)  # type: ignore[method-assign]
# The limit holds while the body streams in: Starlette would otherwise spool the whole upload before any check.
api.add_middleware(BodyLimit, max_body_bytes=MAX_REQUEST_BYTES, advice="send fewer or smaller images per request")


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, edge: DeploymentHandle, config: ClusterConfig) -> None:
        self.edge = edge
        self.config = config
        self.edge_health = HandleHealth(edge, _fresh_handle("edge"), "edge", config.health_check_timeout_s / 3)
        if config.keys_db is not None:
            ACCESS.access = Access.from_db(config.keys_db, people=False)  # verified keys are remembered for 60 s

    async def check_health(self) -> None:
        await self.edge_health.check()

    async def _upload(self, upload: UploadFile) -> bytes:
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{upload.filename}: over the limit of {MAX_UPLOAD_BYTES} bytes")
        return data

    async def _inspect(self, image: bytes, template: bytes | None, name: str, image_id: str,
                       template_name: str | None) -> InspectionRecord:
        failures = []
        for _ in range(self.config.retries + 1):
            try:
                record = await self.edge.inspect.remote(image, template, name, image_id, template_name)
            except RayActorError as error:  # the replica died or vanished with the request: send it to another
                self.edge_health.called(error)
                failures.append(type(error).__name__)
            except Exception as error:  # the edge failed on this image: an error record, the service goes on
                self.edge_health.called(error)
                return self._failed(name, image_id, f"edge node failed: {type(error).__name__}: {error}")
            else:
                self.edge_health.called(None)
                return record
        return self._failed(name, image_id, f"edge nodes failed {len(failures)} times ({', '.join(failures)})")

    @staticmethod
    def _failed(name: str, image_id: str, reason: str) -> InspectionRecord:
        return InspectionRecord(image=name, image_id=image_id, template=None, status="error", error=reason)

    @api.post("/v1/inspect", response_model=InspectionRecord, summary="Inspect one image (and its template)",
              dependencies=ACCESS.dependencies("operator"), responses={**AUTH_ERRORS, **UNREADABLE_FORM, 413: {"description": f"a file over {MAX_UPLOAD_BYTES} bytes or the request over {MAX_REQUEST_BYTES}"}})
    async def inspect(self, image: UploadFile = File(..., description="the image: JPEG, PNG, BMP or TIFF"),
                      template: UploadFile | None = File(None, description="its aligned defect-free template"),
                      image_id: str | None = Form(None, description="default: the file name without extension")):
        data, reference = await self._upload(image), None if template is None else await self._upload(template)
        name = image.filename or "image"
        template_name = template.filename if template is not None else None
        return await self._inspect(data, reference, name, image_id or name.rsplit(".", 1)[0], template_name)

    @api.post("/v1/inspect/batch", response_model=list[InspectionRecord], summary="Inspect several images at once",
              dependencies=ACCESS.dependencies("operator"), responses={**AUTH_ERRORS, **UNREADABLE_FORM, 413: {"description": f"the request is over {MAX_REQUEST_BYTES} bytes or a file over {MAX_UPLOAD_BYTES}"},
                         422: {"description": f"more than {MAX_BATCH_IMAGES} images, or templates not one per image"}})
    async def inspect_batch(self, images: list[UploadFile] = File(..., description=f"at most {MAX_BATCH_IMAGES} images"),
                            templates: list[UploadFile] | None = File(None, description="one aligned template per image, or none")):
        if len(images) > MAX_BATCH_IMAGES:
            raise HTTPException(422, f"{len(images)} images in one request; the limit is {MAX_BATCH_IMAGES}")
        if templates and len(templates) != len(images):
            raise HTTPException(422, f"{len(images)} images but {len(templates)} templates; send one template per image or none")
        # Each image is read only when it can be dispatched: at most as many in memory as the edge can work on.
        in_flight = asyncio.Semaphore(self.config.edge_replicas * self.config.max_ongoing_requests)

        async def one(index: int, image: UploadFile, template: UploadFile | None) -> InspectionRecord:
            async with in_flight:
                name = image.filename or f"image-{index}"
                reference = None if template is None else await self._upload(template)
                return await self._inspect(await self._upload(image), reference, name,
                                           name.rsplit(".", 1)[0], template.filename if template is not None else None)

        given: Sequence[UploadFile | None] = templates or [None] * len(images)
        pairs = zip(images, given)
        return list(await asyncio.gather(*(one(index, image, template) for index, (image, template) in enumerate(pairs))))

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "policy": self.config.policy, "edge_replicas": self.config.edge_replicas}

    @api.get("/v1/router", summary="Time the routing policy took per decision in this ingress, and its edge nodes",
             dependencies=ACCESS.dependencies("viewer"), responses=AUTH_ERRORS)
    def router(self) -> dict:
        """Decision times from the buckets of the `aivd_router_decision_seconds` histogram, as Prometheus would
        estimate them; under "nodes", each edge replica as the router last saw it, with the policy's score (null for
        a policy without one) and the seconds since."""
        return {**telemetry.DECISIONS.summary(self.config.policy), "nodes": telemetry.NODES.rows()}


def request_router_config(config: ClusterConfig) -> RequestRouterConfig:
    # Ray annotates RequestRouterConfig's **kwargs as dict[str, Any] each (it means the kwargs' dict): hence the ignores.
    stats = {"request_routing_stats_period_s": config.routing_stats_period_s,
             "request_routing_stats_timeout_s": max(config.routing_stats_period_s, 1.0)}
    if config.policy == RAY_DEFAULT_ROUTER:
        return RequestRouterConfig(**stats)  # type: ignore[arg-type]
    return RequestRouterConfig(
        request_router_class="aivd.runtime.router:PolicyRequestRouter",  # type: ignore[arg-type]
        request_router_kwargs={"policy": config.policy, "weights": config.weights and config.weights.model_dump(),
                               "queue_bound": config.max_ongoing_requests,
                               "stats_period_s": config.routing_stats_period_s, "seed": config.seed},
        **stats,  # type: ignore[arg-type]
    )


def actor_options(resources: dict[str, float]) -> dict:
    """`ray_actor_options` for a replica that needs `resources`. Ray takes CPU and GPU as counts of their own (a
    transformers cloud tier: `cloud_resources: {GPU: 1}`); without a CPU count a replica reserves none, so that
    emulated devices can share one machine's cores."""
    custom = dict(resources)
    return {"num_cpus": custom.pop("CPU", 0), "num_gpus": custom.pop("GPU", 0), "resources": custom}


def build_app(config: ClusterConfig):
    """The bound application: `serve.run(build_app(config))`."""
    health = {"health_check_period_s": config.health_check_period_s, "health_check_timeout_s": config.health_check_timeout_s}
    cloud = None
    if config.pipeline.cloud.backend != "none":
        # Ray's stubs type @serve.deployment's result as the decorated class; at run time it is a Deployment.
        cloud = CloudAnalyzer.options(  # type: ignore[attr-defined]
            num_replicas=config.cloud.replicas, max_ongoing_requests=4 * config.cloud.max_batch_size,
            ray_actor_options=actor_options(config.cloud_resources), **health,
        ).bind(config)
    edge = EdgeNode.options(  # type: ignore[attr-defined]
        num_replicas=config.edge_replicas, max_ongoing_requests=config.max_ongoing_requests,
        request_router_config=request_router_config(config),
        ray_actor_options=actor_options(config.edge_resources), **health,
    ).bind(config, cloud, _updater(config))
    return Ingress.options(  # type: ignore[attr-defined]
        max_ongoing_requests=10_000, ray_actor_options=actor_options(config.ingress_resources), **health,
    ).bind(edge, config)


def _updater(config: ClusterConfig):
    """The updater deployment, bound, when the pipeline enables online learning. The store is seeded here, once,
    before any replica or the updater starts (they would race to seed it, and the updater needs a served version)."""
    if not config.pipeline.update.enabled:
        return None
    from aivd.pipeline.factory import build_detector, following_update_store
    from aivd.runtime.updater import EdgeUpdater

    detector = build_detector(config.pipeline.edge, threads=1)[0]
    following_update_store(config.pipeline.update, config.pipeline.edge, detector)

    return EdgeUpdater.options(  # type: ignore[attr-defined]
        ray_actor_options=actor_options(config.updater_resources)).bind(config.pipeline.update, config.reviews_db, detector.labels)


def app_builder(args: dict):
    """For `serve run aivd.runtime.app:app_builder config=cluster.yaml` and KubeRay's RayService import_path."""
    from aivd.runtime.config import load_cluster_config

    if "config" not in args:
        raise ValueError("pass the cluster config: config=PATH/cluster.yaml")
    return build_app(load_cluster_config(args["config"]))
