import datetime
import importlib.util
import ipaddress
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from aivd.core import DEEPPCB_CLASSES, Detections
from aivd.data.deeppcb import default_root
from aivd.serving.server import ServerSettings, server_config

SAMPLES = Path(__file__).resolve().parents[1] / "aivd" / "data" / "samples" / "deeppcb"


@contextmanager
def serving(app, settings: ServerSettings = ServerSettings()):
    """The app under a real uvicorn, as `aivd serve cloud` runs it, on a free port of 127.0.0.1; yields its base URL."""
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"{settings.scheme}://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aivd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


# No schema can say "a valid PNG", so a request the schema allows may still be refused (422): every other check
# (no 5xx, documented status codes, content types and bodies) applies.
UNEXPRESSIBLE = [positive_data_acceptance]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _fuzz_operation(operation, mode, excluded, headers) -> None:
    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case):
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    call()


def fuzz(schema, headers: dict[str, str] | None = None) -> list[str]:
    """Fuzzes an HTTP API with schemathesis from its OpenAPI document against the real server: no 5xx, and every
    answer (status code, content type, body) as the document says; fixed seed, bounded examples. Runs every
    operation of `schema` with valid and invalid data; returns their names. Hypothesis raises the first failure,
    shrunk. `headers` go with every request (an API key)."""
    names = []
    if headers and "Authorization" in headers:
        # Registered as the schema's auth, not sent as a plain header: a header given with each call would replace
        # the Authorization a negative case made invalid, and schemathesis would count the valid key's acceptance
        # as invalid data accepted.
        key = headers["Authorization"]

        @schema.auth()
        class Key:
            def get(self, case, context):
                return key

            def set(self, case, data, context):
                case.headers = {**(case.headers or {}), "Authorization": data}

        headers = {name: value for name, value in headers.items() if name != "Authorization"} or None
    for result in schema.get_all_operations():
        operation = result.ok()
        # Without a body or parameters there is nothing to make invalid.
        inputs = len(operation.body) + len(operation.query) + len(operation.path_parameters)
        # Multipart form fields travel as untyped text: a boolean "made invalid" for a file or a string field
        # arrives as the valid text "true", so such data cannot be expected to be refused.
        multipart = any(body.media_type.startswith("multipart/") for body in operation.body)
        excluded = UNEXPRESSIBLE + ([negative_data_rejection] if multipart else [])
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 2 if inputs else 1]:
            _fuzz_operation(operation, mode, excluded, headers)
        names.append(f"{operation.method.upper()} {operation.path}")
    return names


def dets(boxes, scores=None, classes=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else scores
    classes = np.zeros(len(boxes), int) if classes is None else classes
    return Detections(boxes, scores, classes, DEEPPCB_CLASSES)


def aivd(*args, rc=0, timeout: float = 300, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The `aivd` command run in a subprocess, as a user runs it, with `input` on its stdin and `env` added to its
    environment; its exit code must be `rc` (None: any)."""
    run = subprocess.run([sys.executable, "-m", "aivd.cli.main", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                         input=input, env={**os.environ, **(env or {})})
    assert rc is None or run.returncode == rc, run.stderr[-2000:]
    return run


def write_file(path, text: str):
    """A text file at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def blank_image(path, width: int = 64, height: int = 48):
    """A white grey image file at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), 255, np.uint8))
    return path


@pytest.fixture(scope="session")
def deeppcb_root() -> Path:
    """The real DeepPCB data set. CI sets AIVD_REQUIRE_DATA=1 so that a missing data set fails instead of skipping."""
    root = default_root()
    if root is None or not (root / "PCBData").is_dir():
        if os.environ.get("AIVD_REQUIRE_DATA") == "1":
            pytest.fail("DeepPCB not found: set AIVD_DEEPPCB_ROOT or place it at ../shared/data/deeppcb")
        pytest.skip("DeepPCB data set not available")
    return root


@pytest.fixture(scope="session")
def neu_det_root() -> Path:
    """The real NEU-DET data set (Pascal VOC layout): $AIVD_NEU_DET_ROOT, else ../shared/data/neu-det beside the
    checkout; skipped without it unless AIVD_REQUIRE_DATA=1."""
    root = Path(os.environ.get("AIVD_NEU_DET_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data" / "neu-det")
    if not (root / "Annotations").is_dir():
        if os.environ.get("AIVD_REQUIRE_DATA") == "1":
            pytest.fail("NEU-DET not found: set AIVD_NEU_DET_ROOT or place it at ../shared/data/neu-det")
        pytest.skip("NEU-DET data set not available")
    return root


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """$AIVD_TEST_POSTGRES_URL, a PostgreSQL database the tests create schemas in (`.ci/postgres` makes one and
    prints its URL); skipped without it, except where AIVD_REQUIRE_POSTGRES=1 (CI) makes that a failure."""
    url = os.environ.get("AIVD_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("AIVD_REQUIRE_POSTGRES") == "1":
            pytest.fail("AIVD_TEST_POSTGRES_URL is not set: run .ci/postgres and export the URL it prints")
        pytest.skip("no PostgreSQL server: set AIVD_TEST_POSTGRES_URL (.ci/postgres prints one)")
    yield url


_schemas = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> Iterator[str]:
    """The URL of an empty result database: a SQLite file, or a schema of its own in the PostgreSQL test database
    (the URL sets it as the connection's search_path), dropped afterwards with everything in it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'aivd.sqlite'}"
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    base = make_url(request.getfixturevalue("postgres_url"))
    schema = f"test_{os.getpid()}_{next(_schemas)}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # left by a killed test session
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def one_torch_thread():
    """The tiny VLM is faster on one thread, and much faster than on two when other work shares the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised Qwen2-VL (`aivd.cloud.llm.tiny`), built once per test session."""
    from aivd.cloud.llm.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


# --- real servers for the tests: free ports, OpenAI-compatible LLM servers in processes of their own -----------------


def require(*modules: str, install: str) -> None:
    """Skip when an optional package a server test needs is missing, except in CI, which must install it."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        message = f"{', '.join(missing)} not installed: pip install {install}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test; {message}")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """An OpenAI-compatible server started for the tests: its API root, the model name it serves, and its log."""

    def __init__(self, url: str, model: str, log: Path, process: subprocess.Popen):
        self.url, self.model, self.log, self.process = url, model, log, process

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def requests_received(self) -> int:
        # transformers serve logs each request it starts: "[Request received]" before 5.x, "Request ID: model ..." since.
        return len(re.findall(r"\[Request received\]|\bRequest \S+: model ", self.text()))

    def wait_for_requests(self, count: int, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while self.requests_received() < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.requests_received()

    def config(self, **values):
        from aivd.cloud.llm.openai_backend import OpenAIConfig

        return OpenAIConfig(base_url=self.url, model=self.model, **({"structured_output": "none", "max_tokens": 24} | values))


def wait_until_up(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- a real server that enforces the schema: llama.cpp --------------------------------------------------------------
#
# llama-cpp-python's server turns the JSON Schema into a grammar that constrains decoding, so even a random model
# answers JSON of the schema's shape. It has no vision tower for a GGUF written here (images are dropped from the
# prompt), and llama.cpp's grammar leaves number bounds unchecked: the random model writes confidences far above 1,
# which parse_analysis must refuse.


def write_tiny_gguf(out_dir: Path) -> Path:
    """A tiny random Llama-architecture GGUF with `build_tiny_vlm`'s byte-level BPE tokenizer and chat template."""
    import gguf
    import transformers

    from aivd.cloud.llm.tiny import build_tiny_vlm

    qwen = build_tiny_vlm(out_dir / "qwen2-vl")
    spec = json.loads(transformers.AutoTokenizer.from_pretrained(qwen).backend_tokenizer.to_str())
    special = {token["content"]: token["id"] for token in spec["added_tokens"]}
    tokens = sorted(spec["model"]["vocab"] | special, key=lambda token: (spec["model"]["vocab"] | special)[token])
    embed, ff, layers, heads, kv_heads = 64, 128, 2, 4, 2
    head_dim = embed // heads
    path = out_dir / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(embed)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens])
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in spec["model"]["merges"]])
    writer.add_bos_token_id(special["<|endoftext|>"])
    writer.add_eos_token_id(special["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template((qwen / "chat_template.jinja").read_text())
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), embed), "output_norm.weight": (embed,), "output.weight": (len(tokens), embed)}
    for block in range(layers):
        shapes |= {f"blk.{block}.{name}.weight": shape for name, shape in {
            "attn_norm": (embed,), "ffn_norm": (embed,), "attn_q": (embed, embed), "attn_k": (kv_heads * head_dim, embed),
            "attn_v": (kv_heads * head_dim, embed), "attn_output": (embed, embed), "ffn_gate": (ff, embed), "ffn_up": (ff, embed),
            "ffn_down": (embed, ff)}.items()}
    for name, shape in shapes.items():
        weights = np.ones(shape) if name.endswith("norm.weight") else rng.normal(0, 0.02, shape)
        writer.add_tensor(name, weights.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    require("llama_cpp", "gguf", "transformers", install="'llama-cpp-python[server]>=0.3.36' gguf (and the vlm extra)")
    model = write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny",
                                    "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/v1/models", log)
        yield Server(f"http://127.0.0.1:{port}/v1", "tiny", log, process)
    finally:
        stop(process)
