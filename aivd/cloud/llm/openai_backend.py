"""`OpenAIAnalyzer`: a multimodal LLM behind any OpenAI-compatible chat-completions server (vLLM, SGLang,
Ollama, LM Studio, `transformers serve`, a hosted API), driven with the official `openai` client.

Each region is one chat request: the prompt (`aivd.cloud.llm.prompts`) with the test crop and the template
crop as PNG data URLs, and the answer's JSON Schema as structured output, in the form the server understands
(`structured_output`). Requests run `concurrency` at a time on one pool per analyzer, so the limit holds however
many images are in flight. The client retries connection errors, timeouts, 408/409/429 and 5xx answers
`max_retries` times with backoff. A request still failing (or refused with a 4xx) fails the batch at once, and
the batch's regions not yet sent are not sent; answers that `parse_analysis` refuses fail the batch once all
its regions are answered, naming each refused region and why. Either way the `AnalyzerError` leaves the image
with the edge's own results and the reason in `cloud_error`: a wrong answer is never passed on. Sizes and
connectivity come from the pixels (`aivd.cloud.measure`), never from the model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aivd.cloud.analyzer import Analyses, AnalyzerError
from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeBase
from aivd.cloud.llm.prompts import (
    AnswerError,
    PromptTemplate,
    build_messages,
    load_prompt,
    parse_analysis,
    region_images,
    to_openai_messages,
)
from aivd.cloud.measure import measure
from aivd.config import ConfigError  # one error for every unusable setting, whatever its file
from aivd.core import Region
from aivd.core.redaction import redact_url
from aivd.data.yaml_files import first_problem, read_yaml_mapping
from aivd.schema.analysis import DefectAnalysis, analysis_json_schema

# How the answer's JSON Schema is sent:
#   json_schema         the OpenAI API's response_format {"type": "json_schema", ...} (OpenAI, vLLM, SGLang, Ollama, LM Studio)
#   json_object         {"type": "json_object", "schema": ...}, the form llama-cpp-python's server reads
#   structured_outputs  vLLM's own extra field, {"structured_outputs": {"json": schema}} (vLLM >= 0.10.2)
#   guided_json         vLLM's older extra field (removed in vLLM 0.12)
#   none                only in the prompt's text, for servers that support none of the above
# Servers enforce a schema's structure but not always its value bounds (llama.cpp ignores minimum/maximum), so
# every answer is still validated.
StructuredOutput = Literal["json_schema", "json_object", "structured_outputs", "guided_json", "none"]
SCHEMA_NAME = "defect_analysis"
FAILURES_SHOWN = 3  # a batch error quotes this many regions' failures and counts the rest


class OpenAIConfig(BaseModel):
    """Where the server is and how to talk to it. `aivd inspect --llm-config FILE` reads these keys from YAML."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the server's OpenAI API root, e.g. http://localhost:8000/v1")
    model: str = Field(min_length=1, description="the model name the server knows (a vLLM LoRA module's name selects the adapter)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key; None: the server needs none")
    timeout_s: float = Field(60.0, gt=0, description="per request attempt")
    max_retries: int = Field(2, ge=0, description="the client's retries of connection errors, timeouts, 408/409/429 and 5xx")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    prompt: str | None = Field(None, description="a shipped prompt version (v1, ...) or a prompt YAML file; None: the newest")
    structured_output: StructuredOutput = "json_schema"
    max_tokens: int = Field(512, ge=16, description="the answer's token limit; a longer answer is an error")
    temperature: float = Field(0.0, ge=0, le=2)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(f"must be http(s)://host[:port]/..., got {redact_url(url)!r}")
        return url.rstrip("/")

    @classmethod
    def load(cls, path: str | Path, **overrides) -> OpenAIConfig:
        """The YAML file at `path`, with `overrides` (those not None) replacing its keys."""
        path = Path(path)
        raw = read_yaml_mapping(path, ConfigError, "base_url: http://localhost:8000/v1")
        return cls.build(raw | {key: value for key, value in overrides.items() if value is not None}, str(path))

    @classmethod
    def build(cls, values: dict, where: str = "LLM config") -> OpenAIConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(first_problem(error, where)) from None

    def api_key(self) -> str:
        if self.api_key_env is None:
            return "none"  # the client insists on a key; servers started without one ignore it
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(f"api_key_env: environment variable {self.api_key_env} is not set")
        return key


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} {image.shape} image as PNG")
    return encoded.tobytes()


class _RequestFailed(Exception):
    """A request the client gave up on (after its retries): the server is unreachable, slow or refused it."""


class OpenAIAnalyzer:
    """An `Analyzer` over an OpenAI-compatible server. `class_names` are the classes a region may be given (the
    detector's); `knowledge` gives the prompt their one-line descriptions and what is inspected; `pcb_facts` adds
    the copper and conductor measurements (for PCB domains).

    Each `analyze` answer carries the request and answer bodies it cost (the client's retries are not seen);
    `bytes_sent` / `bytes_received` add them up over the object's life.
    """

    def __init__(
        self, config: OpenAIConfig, class_names: Sequence[str], knowledge: str | Path | KnowledgeBase = DEFAULT_KNOWLEDGE,
        pcb_facts: bool = True,
    ):
        try:
            import openai
        except ImportError:
            raise ConfigError("the openai backend needs the `openai` package: pip install 'aivd[llm]'") from None
        if not class_names:
            raise ConfigError("the openai backend needs at least one class name")
        self.config = config
        self.class_names = list(class_names)
        self.knowledge = knowledge if isinstance(knowledge, KnowledgeBase) else KnowledgeBase.load(knowledge)
        self.pcb_facts = pcb_facts
        self.prompt: PromptTemplate = load_prompt(config.prompt)
        self.name = f"openai:{config.model}"
        self._openai = openai
        self._client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key(), timeout=config.timeout_s,
                                     max_retries=config.max_retries)
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="aivd-llm")
        self._lock = threading.Lock()
        self._request_options = self._structured_output(analysis_json_schema(self.class_names))
        self.bytes_sent = self.bytes_received = 0

    def _structured_output(self, schema: dict) -> dict:
        mode = self.config.structured_output
        if mode == "json_schema":
            return {"response_format": {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}}
        if mode == "json_object":
            return {"response_format": {"type": "json_object", "schema": schema}}
        if mode == "structured_outputs":
            return {"extra_body": {"structured_outputs": {"json": schema}}}
        if mode == "guided_json":
            return {"extra_body": {"guided_json": schema}}
        return {}

    def messages(self, region: Region) -> list[dict]:
        """The OpenAI chat messages sent for `region`."""
        chat = build_messages(self.prompt, region, self.class_names, self.knowledge)
        return to_openai_messages(chat, [png_bytes(image) for image in region_images(region)])

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        unreachable = threading.Event()
        cost = Analyses()  # the batch's traffic, added up by the request threads
        futures = [self._pool.submit(self._analyze_one, region, unreachable, cost) for region in regions]
        results = Analyses()
        failures: list[str] = []
        for region, future in zip(regions, futures):
            try:
                results.append(future.result())
            except AnswerError as error:
                failures.append(f"{region.region_id}: invalid answer: {error}")
            except _RequestFailed as error:
                wait(futures)  # the rest are skipped, or finish the requests already sent
                raise AnalyzerError(f"{self.name} at {redact_url(self.config.base_url)}: {region.region_id}: {error}",
                                    cost.bytes_sent, cost.bytes_received) from None
        if failures:
            more = f"; and {len(failures) - FAILURES_SHOWN} more" if len(failures) > FAILURES_SHOWN else ""
            raise AnalyzerError(f"{self.name}: {len(failures)} of {len(regions)} regions failed: "
                                f"{'; '.join(failures[:FAILURES_SHOWN])}{more}", cost.bytes_sent, cost.bytes_received)
        results.bytes_sent, results.bytes_received = cost.bytes_sent, cost.bytes_received
        return results

    def _analyze_one(self, region: Region, unreachable: threading.Event, cost: Analyses) -> DefectAnalysis:
        # Once one request of the batch has failed for good, the server is down or refuses: the regions not yet
        # sent would fail the same way, each after its own timeouts and retries, so they are not sent.
        if unreachable.is_set():
            raise _RequestFailed("not sent: another request of the batch failed")
        try:
            text = self.complete(self.messages(region), cost)
        except _RequestFailed:
            unreachable.set()
            raise
        return parse_analysis(text, self.class_names).model_copy(update={"measurements": measure(region, pcb_facts=self.pcb_facts)})

    def complete(self, messages: list[dict], cost: Analyses | None = None) -> str:
        """The text of the server's answer to `messages`, sent with the configured structured output; its bytes are
        added to `cost`."""
        openai = self._openai
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                # The SDK types each message as a TypedDict with a literal role; ours come from the prompt file.
                model=self.config.model, messages=messages, max_tokens=self.config.max_tokens,  # type: ignore[arg-type]
                temperature=self.config.temperature, **self._request_options,
            )
            completion = raw.parse()
        except openai.APITimeoutError:
            raise _RequestFailed(f"no answer within {self.config.timeout_s:g} s ({self.config.max_retries + 1} tries)") from None
        except openai.APIConnectionError as error:
            raise _RequestFailed(f"cannot connect ({self.config.max_retries + 1} tries): {error.__cause__ or error}") from None
        except openai.APIStatusError as error:
            raise _RequestFailed(f"HTTP {error.status_code}: {_status_detail(error)}") from None
        except openai.OpenAIError as error:  # e.g. an answer body that is not a chat completion
            raise _RequestFailed(f"{type(error).__name__}: {error}") from None
        self._count(cost, len(raw.http_request.content), len(raw.content))
        if not completion.choices:
            raise AnswerError("the server answered no choices")
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            raise AnswerError(f"the answer was cut off at max_tokens={self.config.max_tokens}: {(choice.message.content or '')[:120]!r}")
        if choice.message.content is None:
            refusal = getattr(choice.message, "refusal", None)
            raise AnswerError(f"the answer has no text{f' (refusal: {refusal})' if refusal else ''}")
        return choice.message.content

    def check(self, timeout_s: float) -> None:
        """Raises `AnalyzerError` when the server does not list its models within `timeout_s` (one try): a cheap
        request every OpenAI-compatible server (vLLM, llama.cpp, transformers serve) answers."""
        try:
            self._client.with_options(timeout=timeout_s, max_retries=0).models.list()
        except self._openai.OpenAIError as error:
            raise AnalyzerError(f"{self.name} at {redact_url(self.config.base_url)}: not answering: "
                                f"{type(error).__name__}: {error.__cause__ or error}") from None

    def _count(self, cost: Analyses | None, sent: int, received: int) -> None:
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received
            if cost is not None:
                cost.bytes_sent += sent
                cost.bytes_received += received

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def _status_detail(error) -> str:
    """The server's own message (OpenAI-style {"error": {"message"}} or FastAPI's {"detail"}), else its body's start."""
    body = error.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error")
        if message:
            return str(message)[:300]
    return (error.response.text or error.message)[:300]
