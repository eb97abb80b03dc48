"""`aivd export`: a pack's models for another runtime or precision, written as a complete pack.

Every model of the pack is exported: its detectors, the refiner each detector's metadata names, and the cloud
classifier. Targets:

- `onnx-int8`: static int8 quantisation with onnxruntime.quantization (QDQ, per-channel weights);
- `openvino`: OpenVINO IR in fp32;
- `openvino-int8`: OpenVINO IR quantised to int8 by NNCF (post-training quantisation).

int8 is calibrated on a seeded sample of the calibration data set's training images (never its held-out or test
split). The calibration inputs are recorded from the real pipeline, the pack's detectors and cloud classifier run
as `aivd inspect` runs them, so each model is calibrated on exactly what it sees in inspection: the detector's
pre-processed image and template, the refiner's and the classifier's crops.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aivd.core.errors import AivdError
from aivd.edge.runtimes import OPENVINO_SUFFIX, Runtime, write_openvino_metadata
from aivd.packs.pack import ModelPack, PackManifest, write_manifest

DEFAULT_SAMPLES = 100
# The most an exported pack's F1 or mAP@0.5 may lose against its source's on held-out data (`aivd eval parity`).
DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Target:
    runtime: Runtime
    precision: str

    @property
    def suffix(self) -> str:
        return OPENVINO_SUFFIX if self.runtime == "openvino" else ".onnx"


TARGETS = {
    "onnx-int8": Target("onnxruntime", "int8"),
    "openvino": Target("openvino", "fp32"),
    "openvino-int8": Target("openvino", "int8"),
}


class ExportError(AivdError, ValueError):
    """An export that cannot be done; the message says which input and why."""


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ExportError(f"--to {name}: unknown target; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def export_pack(pack_name: str, to: str, out: Path, calibration: Path | None = None, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                tolerance: float = DEFAULT_TOLERANCE, log: Callable[[str], None] = lambda _: None) -> Path:
    """Export pack `pack_name` (a folder or 'builtin') to target `to` in folder `out`; returns `out`."""
    from aivd.config import ConfigError
    from aivd.pipeline.factory import load_pack

    chosen = target(to)
    try:
        pack = load_pack(pack_name)
    except ConfigError as error:
        raise ExportError(f"--pack {pack_name}: {error}") from None
    if pack.runtime != "onnxruntime" or pack.precision != "fp32":
        raise ExportError(f"--pack {pack_name}: an exported pack ({pack.runtime}, {pack.precision}); export from its fp32 ONNX source")
    if chosen.precision == "int8" and calibration is None:
        raise ExportError(f"--to {to} quantises to int8: give --calibration DATA, a labelled data set whose training images calibrate it")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out}: not empty; give a new folder")
    models = pack_models(pack)
    with tempfile.TemporaryDirectory(prefix="aivd-calibration-") as scratch:
        inputs = record_inputs(pack_name, pack, calibration, samples, seed, Path(scratch), log) if chosen.precision == "int8" else {}
        out.mkdir(parents=True, exist_ok=True)
        renamed = {path: path.with_suffix(chosen.suffix).name for path in models}
        for path in models:
            log(f"exporting {path.name} -> {renamed[path]}")
            metadata = _metadata(path)
            if metadata.get("refiner"):  # the detector names its refiner's file, which the export renames
                metadata["refiner"] = renamed[path.parent / metadata["refiner"]]
            _export_model(path, out / renamed[path], chosen, metadata, inputs.get(path, []))
    shutil.copy(pack.knowledge, out / pack.knowledge.name)
    manifest = pack.manifest.model_copy(update={
        "detectors": pack.manifest.detectors.model_copy(update={
            "image": renamed[pack.image_detector] if pack.image_detector else None,
            "template": renamed[pack.template_detector] if pack.template_detector else None,
        }),
        "classifier": renamed[pack.classifier] if pack.classifier else None,
        "knowledge": pack.knowledge.name, "runtime": chosen.runtime, "precision": chosen.precision, "tolerance": tolerance,
    })
    write_manifest(out, PackManifest.model_validate(manifest.model_dump()), f"aivd export --to {to}")
    return out


def pack_models(pack: ModelPack) -> list[Path]:
    """The pack's model files: its detectors, the refiners they name, and the cloud classifier."""
    models = []
    for detector in (pack.template_detector, pack.image_detector):
        if detector is not None:
            models.append(detector)
            refiner = _metadata(detector).get("refiner")
            if refiner:
                models.append(detector.parent / refiner)
    if pack.classifier is not None:
        models.append(pack.classifier)
    return models


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises protobuf's DecodeError, OSError and its own checker errors
        raise ExportError(f"{path}: not a readable ONNX model ({error})") from None
    return {prop.key: prop.value for prop in model.metadata_props}


class _Recorder:
    """A session that saves each run's inputs (to `folder`, one .npz a run) before running them."""

    def __init__(self, session, folder: Path, saved: list[Path]):
        self.session, self.folder, self.saved = session, folder, saved
        self.runtime, self.metadata = session.runtime, session.metadata
        self.inputs, self.output_names = session.inputs, session.output_names
        folder.mkdir(parents=True, exist_ok=True)

    def run(self, outputs, feeds):
        path = self.folder / f"{len(self.saved):05d}.npz"
        np.savez(path, **feeds)
        self.saved.append(path)
        return self.session.run(outputs, feeds)


def record_inputs(pack_name: str, pack: ModelPack, calibration: Path | None, samples: int, seed: int, scratch: Path,
                  log: Callable[[str], None]) -> dict[Path, list[Path]]:
    """Per model file, the saved inputs it was given while the pack inspected a seeded sample of the calibration
    data's training images (each also without its template, when the pack has an image-only detector too)."""
    from aivd.cloud.builtin import BuiltinAnalyzer
    from aivd.config import ConfigError, build_config
    from aivd.data.deeppcb import DatasetError
    from aivd.data.images import ImageError, read_pair
    from aivd.data.sources import open_data
    from aivd.packs.pack import PackDetector
    from aivd.pipeline.factory import build_pipeline

    assert calibration is not None
    try:
        train, _held_out = open_data(calibration).training_splits(seed)
    except DatasetError as error:
        raise ExportError(f"--calibration {calibration}: {error}") from None
    if not train.samples:
        raise ExportError(f"--calibration {calibration}: no usable training images")
    chosen = random.Random(seed).sample(train.samples, min(samples, len(train.samples)))
    log(f"calibrating on {len(chosen)} of {len(train.samples)} training images of {calibration}")
    cloud = {"backend": "builtin"} if pack.classifier is not None else {"backend": "none"}
    try:
        pipeline = build_pipeline(build_config(None, {"edge": {"pack": pack_name}, "cloud": cloud, "offload": {"budget": 1.0}}), threads=2)
    except ConfigError as error:
        raise ExportError(f"--pack {pack_name}: {error}") from None
    assert isinstance(pipeline.detector, PackDetector)  # a pack's edge, no update store
    saved: dict[Path, list[Path]] = {}

    def record(owner, attribute: str, path: Path) -> None:
        setattr(owner, attribute, _Recorder(getattr(owner, attribute), scratch / path.name, saved.setdefault(path, [])))

    for detector in (pipeline.detector.template_aware, pipeline.detector.image_only):
        detector = getattr(detector, "detector", detector)  # inside the tiling wrapper
        if detector is not None:
            record(detector, "session", detector.path)
            if detector.refiner is not None:
                record(detector, "refiner", detector.refiner_path)
    if isinstance(pipeline.analyzer, BuiltinAnalyzer):
        record(pipeline.analyzer.classifier, "session", pipeline.analyzer.classifier.path)
    both = pack.image_detector is not None and pack.template_detector is not None
    for sample in chosen:
        try:
            image, template = read_pair(sample.image_path, sample.template_path)
        except ImageError as error:
            raise ExportError(f"--calibration {calibration}: {error}") from None
        pipeline.run(image, template, sample.image_id)
        if both and template is not None:
            pipeline.run(image, None, sample.image_id)
    for path in pack_models(pack):
        if not saved.get(path):
            raise ExportError(f"--calibration {calibration}: {path.name} saw no input on {len(chosen)} images (no box reached it); "
                              "give more --samples or other data")
    return saved


def _export_model(source: Path, destination: Path, chosen: Target, metadata: dict[str, str], inputs: list[Path]) -> None:
    try:
        if chosen.runtime == "onnxruntime":
            _quantise_onnx(source, destination, inputs)
            _set_onnx_metadata(destination, metadata)
        else:
            _openvino(source, destination, metadata, inputs if chosen.precision == "int8" else None)
    except ExportError:
        raise
    except Exception as error:  # the quantisers and converters raise many types; each is one line here
        raise ExportError(f"{source.name}: failed to export to {destination.name} ({type(error).__name__}: {str(error).strip().splitlines()[0]})") from None


def _load(inputs: list[Path]):
    for path in inputs:
        yield _feeds(path)


def _feeds(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def _quantise_onnx(source: Path, destination: Path, inputs: list[Path]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = _load(inputs)

        def get_next(self):
            return next(self.feeds, None)

    prepared = destination.with_suffix(".prepared.onnx")
    quant_pre_process(str(source), str(prepared))  # shape inference and graph fusions, as the quantiser advises
    try:
        quantize_static(
            str(prepared), str(destination), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            # MinMax keeps only each tensor's minimum and maximum per run (the calibration graph reduces them), so
            # the runs need not be merged in chunks (ORT 1.32's chunking, CalibMaxIntermediateOutputs, drops them).
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _set_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _openvino(source: Path, destination: Path, metadata: dict[str, str], inputs: list[Path] | None) -> None:
    import openvino as ov

    model = ov.convert_model(str(source))
    if inputs is not None:
        import nncf

        # NNCF draws progress bars on stdout, where commands print their results (`aivd bench edge`'s JSON).
        with contextlib.redirect_stdout(sys.stderr):
            model = nncf.quantize(model, nncf.Dataset(inputs, _feeds), subset_size=len(inputs))
    write_openvino_metadata(model, metadata)
    # fp32 weights: OpenVINO would otherwise store fp16, which is not the precision the pack records.
    ov.save_model(model, str(destination), compress_to_fp16=False)
