"""`aivd bench`: the benchmarks; each prints one JSON object on stdout."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from aivd.cli.pipeline_options import (
    AUGMENT,
    CLASSIFIER,
    CLOUD_URL,
    DEEPPCB_HELP,
    DEEPPCB_PIXELS_PER_MM,
    EDGE_ONLY,
    JSON_ALWAYS,
    PACK,
    PROPOSAL,
    built_pipeline,
    data_split,
    load_detector,
    load_pipeline,
    pipeline_config,
    resolve_deeppcb,
)
from aivd.cli.train import training_module
from aivd.cli.ui import fail, progress_bar
from aivd.pipeline.inputs import TemplateMode

bench_app = typer.Typer(help="Benchmarks; each prints one JSON object.", no_args_is_help=True)


@bench_app.command("inspect")
def bench_inspect_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split to run over."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
    model: Optional[Path] = typer.Option(None, help="ONNX detector. Default: built-in."),
    pack: Optional[Path] = PACK,
    data: Optional[Path] = typer.Option(None, "--data", help="Any data set (`aivd data check` reads it) instead of DeepPCB."),
    templates: TemplateMode = typer.Option(TemplateMode.auto, help="none: inspect the images without their templates."),
    annotate: bool = typer.Option(True, help="Include writing annotated images, as `aivd inspect` does by default."),
    repeat: int = typer.Option(1, min=1, help="Passes over the images."),
    edge_only: bool = EDGE_ONLY,
    cloud: Optional[str] = CLOUD_URL,
    augment: Optional[bool] = AUGMENT,
) -> None:
    """Inspection speed end to end at batch 1 (decode, pre/post-processing, edge and cloud models), and peak memory."""
    from aivd.bench.inspect_speed import bench_inspect
    from aivd.pipeline.inputs import InspectionTask, tasks_from_deeppcb

    if data is not None:
        samples = data_split(data, split).samples
        tasks = [InspectionTask(s.image_id, s.image_path, s.template_path) for s in samples][:limit]
        pixels_per_mm = None
    else:
        tasks = tasks_from_deeppcb(resolve_deeppcb(deeppcb), split)[:limit]
        pixels_per_mm = DEEPPCB_PIXELS_PER_MM
    if templates is TemplateMode.none:
        tasks = [dataclasses.replace(task, template_path=None) for task in tasks]
    pipeline = load_pipeline(model, None, edge_only, cloud, pixels_per_mm=pixels_per_mm, pack=pack, augment=augment)
    print(json.dumps(bench_inspect(tasks, pipeline, annotate, repeat=repeat)))



@bench_app.command("edge")
def bench_edge_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split to run over."),
    packs: Optional[list[str]] = typer.Option(None, "--packs", metavar="RUN=PACK", help="A run's pack instead of exporting one, e.g. onnx-int8=exported/ (runs: onnx-fp32, onnx-int8, openvino-fp32, openvino-int8). onnx-fp32 defaults to the built-in pack, the others to its export, calibrated on the split's data set's training images. Repeatable."),
    repeat: int = typer.Option(2, min=1, help="Passes over all runs; every other pass runs them in reverse order. Each run's figures are the median of its passes."),
    warmup: int = typer.Option(10, min=0, help="Images run before the clock starts, in each run."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
    samples: int = typer.Option(100, min=1, help="Calibration images of the int8 exports."),
    seed: int = typer.Option(0, help="Seed of the calibration sample."),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """Every edge runtime side by side (onnx-fp32, the reference; onnx-int8; openvino-fp32; openvino-int8): images/s,
    p50/p99 ms, peak RSS and the official F-score and AP, edge alone at batch 1, each run in a process of its own."""
    from aivd.bench.edge import BenchError, bench_edge
    from aivd.cli.ui import console, shown
    from aivd.deploy.export import ExportError

    given = {}
    for item in packs or []:
        name, equals, folder = item.partition("=")
        if not equals or not folder:
            raise fail(f"--packs {item}: expected RUN=PACK, e.g. onnx-int8=exported/")
        given[name] = folder
    try:
        result = bench_edge(resolve_deeppcb(deeppcb), split, given, repeat, warmup, limit, samples, seed,
                            log=lambda line: console.print(shown(line), highlight=False))
    except (BenchError, ExportError) as error:
        raise fail(str(error)) from None
    print(json.dumps(result))


@bench_app.command("live-update")
def bench_live_update_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    limit: int = typer.Option(100, min=1, help="Test images inspected per pass."),
    train_images: int = typer.Option(60, min=10, help="Trainval images the pipeline labels into the update's replay buffer."),
    isolation: str = typer.Option("process", help="Where the update trains: process (lowest priority) or thread."),
    threads: int = typer.Option(1, min=1, help="Torch threads the update trains with."),
    refiner_epochs: int = typer.Option(8, min=1, help="Epochs the update fine-tunes the class refiner."),
    budget: float = typer.Option(0.3, min=0.0, max=1.0, help="Offload budget of the pipeline."),
    duration: float = typer.Option(240.0, min=10.0, help="Seconds of inspection, with updates trained beside it on and off."),
    idle: float = typer.Option(15.0, min=1.0, help="Seconds without training between two updates."),
) -> None:
    """Inspection throughput while an online update trains beside it, against without one (docs/online-learning.md)."""
    from aivd.bench.live_update import bench_live_update
    from aivd.config import ConfigError, build_config
    from aivd.pipeline.inputs import tasks_from_deeppcb

    root = resolve_deeppcb(deeppcb)
    overrides = {"offload": {"budget": budget}, "update": {
        "enabled": True, "model_store": "unused", "isolation": isolation, "learner": {"threads": threads, "refiner_epochs": refiner_epochs}}}
    try:
        config = build_config(None, overrides)
    except ConfigError as error:
        raise fail(str(error)) from None
    tasks = tasks_from_deeppcb(root, "test")[:limit]
    print(json.dumps(bench_live_update(config, tasks, tasks_from_deeppcb(root, "trainval")[:train_images], duration, idle)))


@bench_app.command("router")
def bench_router_command(
    replicas: str = typer.Option("8,64,256", help="Comma-separated replica counts."),
    decisions: int = typer.Option(2000, min=10, help="Decisions timed per replica count."),
    policy: str = typer.Option("aivd", help="Routing policy."),
    seed: int = typer.Option(0),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """The router's time per decision (median and p99, from its decision-time histogram) at each replica count."""
    from aivd.bench.cluster import bench_router
    from aivd.cli.simulate import check_policies, parse_list

    counts = parse_list(replicas, int)
    if not counts or min(counts) < 1:
        raise typer.BadParameter(f"replica counts must be positive integers, got {replicas!r}", param_hint="--replicas")
    print(json.dumps(bench_router(counts, decisions, check_policies([policy])[0], seed)))


@bench_app.command("cluster")
def bench_cluster_command(
    nodes: int = typer.Option(8, min=1, max=64, help="Emulated edge nodes (classes cycle gpu, ipc, arm, ipc)."),
    scenario: int = typer.Option(3, min=1, max=3, help="Simulator scenario whose links and arrivals to copy."),
    policies: str = typer.Option("aivd,ray,rr", help="Routing policies to compare; 'ray' is Ray Serve's own router."),
    requests: int = typer.Option(600, min=1, help="Requests per policy."),
    seed: int = typer.Option(0),
    load: Optional[float] = typer.Option(None, min=0.01, help="Arrival rate as a fraction of the emulated capacity; default: the scenario's."),
    time_scale: float = typer.Option(4.0, min=0.1, help="Service times = the simulator's x this (one machine runs slower devices)."),
    max_ongoing: int = typer.Option(8, min=1, help="Requests in flight per edge replica (Ray's max_ongoing_requests)."),
    port: int = typer.Option(8000, min=1, max=65535),
    sample: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="A *_test.jpg with its *_temp.jpg beside it. Default: a bundled DeepPCB pair."),
    repeat: int = typer.Option(1, min=1, help="Runs per policy, alternating the policies; repeat r uses seed + r for all."),
    noise_floor: bool = typer.Option(True, help="With p2c and --repeat >= 2: run p2c twice per repeat; its ratio to itself is the noise floor."),
    simulate_only: bool = typer.Option(False, "--simulate-only", help="Only the simulator's prediction for these runs (the same send times, seeds and cap), without Ray."),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """Drive real HTTP load through the Ray Serve runtime per policy; print measured and simulated figures as JSON:
    per policy the mean over the repeats with a 95% t-interval, and the ratio to p2c (per-repeat pairs) with its own."""
    from aivd.bench.cluster import bench_cluster, simulate_bench
    from aivd.cli.simulate import check_policies, parse_list
    from aivd.runtime.config import RAY_DEFAULT_ROUTER

    names = parse_list(policies)
    check_policies([n for n in names if n != RAY_DEFAULT_ROUTER] or ["rr"])
    if simulate_only:
        print(json.dumps(simulate_bench(nodes, scenario, names, requests, seed, load, time_scale, max_ongoing, repeat)))
        return
    sample = sample or Path(__file__).resolve().parents[1] / "data" / "samples" / "deeppcb" / "20085291_test.jpg"
    # Ray prints its workers' and raylets' messages on the driver's stdout; keep stdout for the one JSON object.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        report = bench_cluster(nodes, scenario, names, requests, seed, load, time_scale, max_ongoing, port, sample,
                               repeat, noise_floor)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(report))


@bench_app.command("collab")
def bench_collab_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="test, trainval, or holdout (the held-out tenth of trainval, for choices)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
    budget: float = typer.Option(0.3, min=0.0, max=1.0, help="Share of regions the online controller may send to the cloud."),
    budget_filter: str = typer.Option("threshold", "--filter", help="Hard-example filter for the budget run: threshold, margin, cross_entropy, ibt, random."),
    seed: int = typer.Option(0, help="Seed of the random filter and the drift's noise."),
    drift: Optional[str] = typer.Option(None, help="Also stream the split with the imaging degrading from its middle on: KIND:STRENGTH, KIND one of blur, contrast_noise, resample (e.g. blur:1.2)."),
    update: bool = typer.Option(False, "--update/--no-update", help="With --drift: also run the stream with online updates of the edge model (needs the train extra)."),
    workdir: Optional[Path] = typer.Option(None, help="With --update: keep the model store and candidates here. Default: a temporary folder."),
    update_steps: int = typer.Option(0, min=0, help="Detector fine-tuning steps per update (0: only the class refiner is updated)."),
    min_images: int = typer.Option(40, min=1, help="Hard images after drift is seen before an update runs."),
    train_window: int = typer.Option(100, min=1, help="Newest hard images an update trains on."),
    review_share: float = typer.Option(0.0, min=0.0, max=1.0, help="With --update: a simulated reviewer labels this share of the stream from the ground truth (seeded), through the review store the console writes."),
    cloud_update: bool = typer.Option(True, "--cloud-update/--no-cloud-update", help="With --review-share and the built-in cloud: the reviews also update the cloud's classifier."),
    tier_trust: bool = typer.Option(True, "--tier-trust/--no-tier-trust", help="With --review-share: the reviews also decide whether the merge believes the cloud or the edge on the regions sent (docs/collab.md)."),
    drift_start: Optional[int] = typer.Option(None, min=1, help="With --drift: the stream image the drift starts at. Default: the middle of the stream."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="The pipeline config to measure (edge, cloud, and the offload window and warmup the budget "
                                     "run uses), as `aivd inspect --config` takes it. Default: the built-in pipeline."),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """Offload only the hard regions: F-score and bytes against the upload ratio, and at a budget; one JSON object.

    Every policy is replayed through the live pipeline's offloading stage and merge, from one pass of both tiers
    over the split, so its budget run gives what `aivd inspect --config C --offload-budget B` gives."""
    from aivd.bench.collab import bench_collab
    from aivd.collab.hard_examples import FILTERS
    from aivd.data.deeppcb import holdout_split, load_split

    if budget_filter not in FILTERS:
        raise typer.BadParameter(f"unknown filter {budget_filter!r}; known: {', '.join(FILTERS)}", param_hint="--filter")
    if split not in ("test", "trainval", "holdout"):
        raise typer.BadParameter("test, trainval or holdout", param_hint="--split")
    root = resolve_deeppcb(deeppcb)
    samples = holdout_split(load_split(root, "trainval"))[1] if split == "holdout" else load_split(root, split)
    samples = samples[:limit]
    phase = None
    if drift:
        from pydantic import ValidationError

        from aivd.data.drift import DriftPhase

        kind, _, strength = drift.partition(":")
        try:
            phase = DriftPhase(start=len(samples) // 2 if drift_start is None else drift_start, kind=kind, strength=float(strength or "nan"))
        except (ValidationError, ValueError):
            raise typer.BadParameter("KIND:STRENGTH with KIND blur, contrast_noise or resample and STRENGTH > 0", param_hint="--drift") from None
    if update and phase is None:
        raise typer.BadParameter("--update needs --drift", param_hint="--update")
    if drift_start is not None and phase is None:
        raise typer.BadParameter("--drift-start needs --drift", param_hint="--drift-start")
    if review_share and not update:
        raise typer.BadParameter("--review-share needs --update: reviews teach the online update", param_hint="--review-share")
    effective = pipeline_config(config)
    pipeline = built_pipeline(effective, DEEPPCB_PIXELS_PER_MM)
    if pipeline.analyzer is None:
        raise fail("bench collab measures offloading to the cloud: the config's cloud.backend is none")
    if not update:
        print(json.dumps(bench_collab(pipeline, samples, budget, budget_filter, seed, phase, offload=effective.offload)))
        return
    import tempfile

    from aivd.bench.collab import OnlineSettings
    from aivd.collab.drift_monitor import TriggerConfig

    training = training_module("online_update")
    with tempfile.TemporaryDirectory(prefix="aivd-online-") as temporary:
        settings = OnlineSettings(workdir or Path(temporary), training.LearnerConfig(detector_steps=update_steps, seed=seed),
                                  TriggerConfig(min_images=min_images), train_window, review_share=review_share, cloud_update=cloud_update,
                                  tier_trust=tier_trust)
        print(json.dumps(bench_collab(pipeline, samples, budget, budget_filter, seed, phase, settings, effective.offload)))


@bench_app.command("crops")
def bench_crops_command(
    deeppcb: Optional[Path] = typer.Option(None, help=DEEPPCB_HELP),
    split: str = typer.Option("test", help="DeepPCB split."),
    classifier: Optional[Path] = CLASSIFIER,
    model: Optional[Path] = typer.Option(None, help="Edge detector whose candidates are classified. Default: built-in."),
    proposal_threshold: Optional[float] = PROPOSAL,
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images."),
) -> None:
    """Crop classification accuracy of the cloud classifier on ground-truth boxes and on the edge's boxes."""
    from aivd.bench.crop_accuracy import crop_accuracy
    from aivd.cloud.builtin import BUILTIN_CLASSIFIER, CropClassifier
    from aivd.data.deeppcb import load_split
    from aivd.edge.detector import ModelError

    try:
        crop_model = CropClassifier(classifier or BUILTIN_CLASSIFIER)
    except ModelError as error:
        raise fail(str(error)) from None
    with progress_bar() as progress:
        samples = progress.track(load_split(resolve_deeppcb(deeppcb), split)[:limit], description="classifying")
        result = crop_accuracy(crop_model, load_detector(model, None), samples, proposal_threshold)
    print(json.dumps({"split": split, **result}))


@bench_app.command("hostile-inputs")
def bench_hostile_inputs_command(
    timeout: float = typer.Option(300.0, min=1.0, help="Seconds the inspect run may take before it counts as hung."),
) -> None:
    """`aivd inspect --edge-only` over hostile files (a FIFO, /dev/zero, a PNG bomb, markup and newlines in names):
    rows written, exit code, traceback or not, wall time and peak memory."""
    from aivd.bench.hostile_inputs import bench_hostile_inputs

    print(json.dumps(bench_hostile_inputs(timeout)))


@bench_app.command("console")
def bench_console_command(
    db: str = typer.Option(..., "--db", envvar="AIVD_DB", help="SQLAlchemy URL of the result database to seed (unless it holds --images already) and serve."),
    images: int = typer.Option(100_000, "--images", min=1, help="Inspected images the database is seeded up to, about ten defects each."),
    users: int = typer.Option(10, "--users", min=1, help="Concurrent locust users: a live screen for every three operators."),
    duration: float = typer.Option(60.0, "--duration", min=1.0, help="Seconds of load."),
    seed: int = typer.Option(0, help="Seed of the seeded records and of the users' choices."),
    as_json: bool = JSON_ALWAYS,
) -> None:
    """Page and API latency of the real `aivd serve console` under locust users, over a database of --images
    inspected images (seeded first when it holds fewer); p50/p95 per endpoint."""
    from aivd.bench.console_load import bench_console
    from aivd.core.errors import AivdError

    with progress_bar() as progress:
        tasks: list = []  # the seeding bar, made by the first batch: none when the database is seeded already

        def seeded(done: int, total: int) -> None:
            tasks[:] = tasks or [progress.add_task("seeding", total=total)]
            progress.update(tasks[0], completed=done)

        try:
            report = bench_console(db, images, users, duration, seed, progress=seeded)
        except (AivdError, RuntimeError) as error:
            raise fail(str(error)) from None
    print(json.dumps(report))


@bench_app.command("service-abuse")
def bench_service_abuse_command(
    seconds: float = typer.Option(20.0, min=1.0, help="Seconds per phase."),
    idle_connections: int = typer.Option(1100, min=0, help="Idle connections held open while /healthz is measured."),
) -> None:
    """A normal edge client's latency at the real cloud service while a hostile client floods it, and /healthz
    beside idle connections (locust)."""
    from aivd.bench.service_abuse import bench_service_abuse

    try:
        report = bench_service_abuse(seconds, idle_connections)
    except RuntimeError as error:
        raise fail(str(error)) from None
    print(json.dumps(report))

