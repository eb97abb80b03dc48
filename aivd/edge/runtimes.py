"""The runtimes aivd's models run on, behind one small interface: a session with `run(outputs, feeds)`, the
names and shapes of its inputs and outputs, and the model's metadata (labels, thresholds, companion files).

- ONNX Runtime runs `.onnx` files (fp32, or int8 QDQ from `aivd export --to onnx-int8`);
- OpenVINO runs its IR, `.xml` with its `.bin` (`aivd export --to openvino|openvino-int8`). The ONNX metadata
  is kept in the IR's rt_info under `METADATA_KEY`, as one JSON object, so a model reads the same either way.

The file decides the runtime, so a pack's models, the refiner its detector names and the cloud classifier all
run where the export put them; `aivd.packs` checks the files against the runtime its manifest records.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from aivd.core.errors import AivdError

Runtime = Literal["onnxruntime", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "openvino")
OPENVINO_SUFFIX = ".xml"
METADATA_KEY = "aivd_metadata"


class ModelError(AivdError, ValueError):
    """A model file that cannot be used; the message names the file and why."""


class ModelSession(Protocol):
    runtime: Runtime
    metadata: dict[str, str]
    inputs: list[tuple[str, tuple]]  # (name, shape); a dynamic dimension is not an int
    output_names: list[str]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs (None: all, in the model's order) for one set of inputs."""
        ...


def runtime_of(path: str | Path) -> Runtime:
    return "openvino" if Path(path).suffix == OPENVINO_SUFFIX else "onnxruntime"


def open_session(path: str | Path, threads: int) -> ModelSession:
    """The model at `path` on the runtime its file is for, with `threads` threads for one inference."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    return OpenVinoSession(path, threads) if runtime_of(path) == "openvino" else OnnxSession(path, threads)


class OnnxSession:
    runtime: Runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's worker threads spin after each run. With the detector and refiner sessions (and the image
        # prefetch thread) sharing two cores, spinning pools starve each other: 34 ms per detector run instead of 15.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises several private exception types
            raise ModelError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.inputs = [(i.name, tuple(i.shape)) for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(outputs, feeds)


class OpenVinoSession:
    runtime: Runtime = "openvino"

    def __init__(self, path: Path, threads: int):
        try:
            import openvino as ov
        except ImportError:
            raise ModelError(f"{path}: an OpenVINO model, and OpenVINO is not installed (pip install 'aivd[edge]')") from None
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            # The settings of ONNX Runtime's sessions: `threads` for one inference, one request at a time (the
            # latency hint, one stream), and no pinning of threads to cores, which other sessions share. f32: on a
            # CPU with bf16 instructions OpenVINO would otherwise run the float layers in bf16, which is not the
            # precision the pack records (the model's int8 layers stay int8).
            self._compiled = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "ENABLE_CPU_PINNING": False,
                "INFERENCE_PRECISION_HINT": "f32",
            })
        except RuntimeError as error:  # OpenVINO reports unreadable or unsupported models as RuntimeError
            raise ModelError(f"{path}: not a loadable OpenVINO model ({str(error).strip().splitlines()[0]})") from None
        self.metadata = read_openvino_metadata(model)
        self.inputs = [(port.get_any_name(), _shape(port.get_partial_shape())) for port in model.inputs]
        self.output_names = [port.get_any_name() for port in model.outputs]
        self._request = self._compiled.create_infer_request()
        # An infer request holds one inference's buffers; ONNX Runtime's `run` may be called from several threads.
        self._lock = threading.Lock()

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        indices = range(len(self.output_names)) if outputs is None else [self.output_names.index(name) for name in outputs]
        with self._lock:
            self._request.infer(feeds)
            # Copies: the request's output buffers are overwritten by the next inference.
            return [self._request.get_output_tensor(i).data.copy() for i in indices]


def _shape(partial_shape) -> tuple:
    return tuple(dim.get_length() if dim.is_static else None for dim in partial_shape)


def read_openvino_metadata(model) -> dict[str, str]:
    if not model.has_rt_info([METADATA_KEY]):
        return {}
    return json.loads(model.get_rt_info([METADATA_KEY]).astype(str))


def write_openvino_metadata(model, metadata: dict[str, str]) -> None:
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
