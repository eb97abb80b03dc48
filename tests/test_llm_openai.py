"""The `openai` cloud backend: its configuration, the CLI wiring, and a real OpenAI-compatible server.

The server is `transformers serve` (transformers' own OpenAI-compatible server) running a tiny randomly
initialised vision-language model that the test builds, in a process of its own. It takes images in chat
messages, so the test sees the crops reach a vision tower; it ignores `response_format` (it logs so) and
refuses fields it does not know, so schema-constrained decoding cannot be shown with it: a random model answers
garbage, and the tests check that every such answer is refused and reported, never accepted.

The model is a LLaVA (CLIP vision tower, Qwen2 decoder) around the tokenizer and chat template of
`aivd.cloud.llm.tiny.build_tiny_vlm`: `transformers serve` loads a Qwen2-VL checkpoint's processor with its video
processor, which needs torchvision, and the CPU build of torchvision that matches torch is not on PyPI.
"""

import base64
import inspect
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES, Server, free_port, require, stop, wait_until_up

from aivd.cloud.analyzer import AnalyzerError
from aivd.cloud.llm.prompts import AnswerError, parse_analysis, region_images
from aivd.cloud.measure import measure
from aivd.core import DEEPPCB_CLASSES, Region
from aivd.schema.analysis import LLM_FIELDS

openai = pytest.importorskip("openai", reason="the `llm` extra is not installed")
from aivd.cloud.llm.openai_backend import ConfigError, OpenAIAnalyzer, OpenAIConfig, png_bytes  # noqa: E402

CLASSES = DEEPPCB_CLASSES.names
ROOT = Path(__file__).resolve().parents[1]
PATCH = 14
IMAGE_SIDE = 56  # the tiny vision tower sees (56 / 14)^2 = 16 patches, so each image is 16 prompt tokens
TOKENS_PER_IMAGE = (IMAGE_SIDE // PATCH) ** 2
VALID = {"is_defect": True, "defect_type": "short", "confidence": 0.8, "severity": "critical",
         "likely_causes": ["under-etching"], "description": "Copper bridges two tracks.", "recommended_action": "Reject the board."}


def board_region(index: int = 0, template: bool = True) -> Region:
    image = np.full((48, 64), 255, np.uint8)
    image[10:18, :] = 0
    image[30:38, :] = 0
    test = image.copy()
    test[18:30, 20 + index : 26 + index] = 0  # a bridge between the two tracks
    return Region(f"board#{index}", test, image if template else None, (18.0, 16.0, 28.0 + index, 32.0), (0, 0), "short", 0.6, 48.0)


# --- configuration and request building: no server ---------------------------------------------------------------


def test_config_is_validated_with_the_field_and_the_problem(tmp_path, monkeypatch):
    config = OpenAIConfig(base_url="http://localhost:8000/v1/", model="qwen")
    assert config.base_url == "http://localhost:8000/v1" and config.structured_output == "json_schema" and config.concurrency == 4
    with pytest.raises(ConfigError, match=r"LLM config: base_url: Value error, must be http\(s\)://host"):
        OpenAIConfig.build({"base_url": "localhost:8000", "model": "qwen"})
    with pytest.raises(ConfigError, match="structured_output: Input should be 'json_schema', 'json_object', 'structured_outputs', 'guided_json' or 'none'"):
        OpenAIConfig.build({"base_url": "http://h/v1", "model": "m", "structured_output": "grammar"})

    path = tmp_path / "llm.yaml"
    path.write_text("base_url: http://h:8000/v1\nmodel: m\nconcurrency: 0\n")
    with pytest.raises(ConfigError, match=f"{path}: concurrency: Input should be greater than or equal to 1"):
        OpenAIConfig.load(path)
    assert OpenAIConfig.load(path, concurrency=2, model=None).concurrency == 2  # overrides replace the file's keys; None leaves them
    path.write_text("base_url: http://h:8000/v1\nmodel: m\ntimeout: 5\n")
    with pytest.raises(ConfigError, match="timeout: Extra inputs are not permitted"):
        OpenAIConfig.load(path)
    path.write_text("- base_url\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list, e.g. base_url"):
        OpenAIConfig.load(path)

    keyed = OpenAIConfig(base_url="http://h/v1", model="m", api_key_env="AIVD_TEST_LLM_KEY")
    monkeypatch.delenv("AIVD_TEST_LLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable AIVD_TEST_LLM_KEY is not set"):
        keyed.api_key()
    monkeypatch.setenv("AIVD_TEST_LLM_KEY", "sk-test")
    assert keyed.api_key() == "sk-test"


SCHEMA_IN_REQUEST = {
    "json_schema": lambda options: options["response_format"]["json_schema"]["schema"],
    "json_object": lambda options: options["response_format"]["schema"],
    "structured_outputs": lambda options: options["extra_body"]["structured_outputs"]["json"],
    "guided_json": lambda options: options["extra_body"]["guided_json"],
}


@pytest.mark.parametrize("mode", [*SCHEMA_IN_REQUEST, "none"])
def test_the_schema_is_sent_in_the_form_the_server_reads(mode):
    analyzer = OpenAIAnalyzer(OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m", structured_output=mode), CLASSES)
    options = analyzer._request_options
    if mode == "none":
        assert options == {}
    else:
        assert len(options) == 1 and SCHEMA_IN_REQUEST[mode](options)["properties"]["defect_type"]["enum"] == list(CLASSES)
    if mode == "json_schema":
        assert options["response_format"]["type"] == "json_schema" and options["response_format"]["json_schema"]["strict"] is True
    analyzer.close()


def test_messages_carry_both_crops_as_png_data_urls():
    analyzer = OpenAIAnalyzer(OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m"), CLASSES)
    region = board_region()
    system, user = analyzer.messages(region)
    assert system["role"] == "system" and isinstance(system["content"], str)
    first, second, text = user["content"]
    for part, expected in zip((first, second), region_images(region)):
        png = base64.b64decode(part["image_url"]["url"].removeprefix("data:image/png;base64,"))
        assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), expected)  # lossless, grey
    assert '"short" with score 0.60' in text["text"]
    analyzer.close()


def test_answers_get_the_measurements_from_the_pixels_and_one_bad_answer_fails_the_batch():
    """The analyzer's own logic around the request (the request itself is stubbed here; the server tests below send it)."""
    analyzer = OpenAIAnalyzer(OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m", concurrency=3), CLASSES)
    regions = [board_region(i) for i in range(5)]

    def answer(messages, cost=None):  # each region's answer names its own box width, to check the order survives the pool
        width = re.search(r"= 18, 16, (\d+), 32", messages[-1]["content"][-1]["text"]).group(1)
        return json.dumps(VALID | {"description": f"width {width}"})

    analyzer.complete = answer
    analyses = analyzer.analyze(regions)
    assert [a.description for a in analyses] == [f"width {28 + i}" for i in range(5)]
    assert [a.measurements for a in analyses] == [measure(r) for r in regions]
    assert analyses[0].measurements.joins_conductors is True and analyses[0].measurements.width_mm == pytest.approx(10 / 48, abs=1e-3)

    analyzer.complete = lambda messages, cost=None: answer(messages).replace('"short"', '"scratch"') if "30, 32" in messages[-1]["content"][-1]["text"] else answer(messages)
    with pytest.raises(AnalyzerError, match=r"1 of 5 regions failed: board#2: invalid answer: defect_type 'scratch' is not one of"):
        analyzer.analyze(regions)
    analyzer.close()


def test_an_unreachable_server_fails_the_batch_saying_so_and_sends_no_more_regions():
    config = OpenAIConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=1, concurrency=1)
    analyzer = OpenAIAnalyzer(config, CLASSES)
    started = time.perf_counter()
    with pytest.raises(AnalyzerError, match=r"openai:m at http://127.0.0.1:\d+/v1: board#0: cannot connect \(2 tries\)"):
        analyzer.analyze([board_region(i) for i in range(20)])
    assert time.perf_counter() - started < 10  # the 19 regions queued behind the first are cancelled, not each retried
    analyzer.close()


def test_the_health_probe_of_an_unreachable_server_fails_at_once_saying_where(monkeypatch):
    analyzer = OpenAIAnalyzer(OpenAIConfig(base_url=f"http://user:secret@127.0.0.1:{free_port()}/v1", model="m", max_retries=5), CLASSES)
    started = time.perf_counter()
    with pytest.raises(AnalyzerError, match=r"^openai:m at http://user:\*+@127.0.0.1:\d+/v1: not answering: APIConnectionError") as failed:
        analyzer.check(timeout_s=2)
    assert "secret" not in str(failed.value) and time.perf_counter() - started < 2  # one try, not the configured retries
    analyzer.close()


@pytest.mark.parametrize("args, message", [
    (["--llm-model", "m"], r"cloud.llm.model \(--llm-model\): for backend openai or transformers \(--cloud-backend\)"),
    (["--cloud-backend", "openai", "--cloud", "http://h:8700"], "--cloud and --cloud-backend each choose the cloud tier: give one"),
    (["--cloud-backend", "openai", "--llm-model", "m"], r"\(--llm-base-url, --llm-model\), or cloud.llm.config \(--llm-config FILE\)"),
    (["--cloud-backend", "openai", "--llm-base-url", "ftp://h", "--llm-model", "m"], "cloud.llm: base_url: Value error"),
    (["--cloud-backend", "openai", "--llm-base-url", "http://h/v1", "--llm-model", "m", "--llm-adapter", "a"], "picks the adapter by model name"),
    (["--cloud-backend", "openai", "--llm-base-url", "http://h/v1", "--llm-model", "m", "--llm-prompt", "v99"], "no shipped prompt version 'v99'"),
    (["--cloud-backend", "transformers"], r"needs cloud.llm.model \(--llm-model"),
    (["--cloud-backend", "transformers", "--llm-model", "m", "--llm-base-url", "http://h/v1"], "are for backend openai"),
])
def test_cli_refuses_llm_options_that_do_not_fit(tmp_path, args, message):
    from typer.testing import CliRunner

    from aivd.cli.main import app

    result = CliRunner().invoke(app, ["inspect", str(SAMPLES / "00041200_test.jpg"), "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output


# --- a real OpenAI-compatible server -------------------------------------------------------------------------------


def build_tiny_llava(out_dir: Path) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Qwen2 decoder) with `build_tiny_vlm`'s tokenizer and chat template."""
    import torch
    import transformers

    from aivd.cloud.llm.tiny import build_tiny_vlm

    qwen = build_tiny_vlm(out_dir / "qwen2-vl")
    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen)
    template = (qwen / "chat_template.jinja").read_text().replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>")
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>")}
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIDE,
            patch_size=PATCH, projection_dim=32).to_dict(),
        text_config=transformers.Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]).to_dict(),
        image_token_id=ids["<|image_pad|>"], vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}),
        tokenizer=tokenizer, chat_template=template, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
    )
    out = out_dir / "llava"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require("transformers", "torch", install="-e '.[train,vlm]'")
    model = build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    # Newer transformers log each request they start only with --enable-log-requests (`Server.requests_received`).
    from transformers.cli.serve import Serve

    request_log = ["--enable-log-requests"] if "enable_log_requests" in inspect.signature(Serve.__init__).parameters else []
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--log-level", "info", *request_log]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/health", log)
        yield Server(f"http://127.0.0.1:{port}/v1", str(model), log, process)
    finally:
        stop(process)


@pytest.mark.integration
def test_the_crops_reach_the_vision_model_and_a_garbage_answer_is_refused(server):
    analyzer = OpenAIAnalyzer(server.config(), CLASSES)
    region = board_region()
    with pytest.raises(AnalyzerError, match=r"openai:\S+: 1 of 1 regions failed: board#0: invalid answer: ") as failed:
        analyzer.analyze([region])
    pngs = sum(len(png_bytes(image)) for image in region_images(region))
    assert failed.value.bytes_sent > pngs * 4 / 3 and failed.value.bytes_received > 100  # the error says what it cost
    assert (analyzer.bytes_sent, analyzer.bytes_received) == (failed.value.bytes_sent, failed.value.bytes_received)

    # The server counts each image as the vision tower's patches: the same messages without the images are
    # exactly that many prompt tokens shorter.
    messages = analyzer.messages(region)
    text_only = [m | {"content": [p for p in m["content"] if p["type"] == "text"]} if isinstance(m["content"], list) else m
                 for m in messages]
    usage = [analyzer._client.chat.completions.create(model=server.model, messages=m, max_tokens=1).usage.prompt_tokens
             for m in (messages, text_only)]
    assert usage[0] - usage[1] == 2 * TOKENS_PER_IMAGE
    analyzer.close()


@pytest.mark.integration
def test_the_schema_goes_as_response_format_and_an_unconstrained_answer_is_still_refused(server):
    analyzer = OpenAIAnalyzer(server.config(structured_output="json_schema"), CLASSES)
    with pytest.raises(AnalyzerError, match="board#0: invalid answer: (answer is not JSON|the answer was cut off)"):
        analyzer.analyze([board_region()])
    assert "Ignoring unsupported fields in the request: {'response_format'}" in server.text()
    analyzer.close()


@pytest.mark.integration
def test_a_request_the_server_refuses_fails_the_batch_at_once(server):
    analyzer = OpenAIAnalyzer(server.config(structured_output="structured_outputs", max_retries=2), CLASSES)
    refusals = server.text().count('"POST /v1/chat/completions HTTP/1.1" 422')
    with pytest.raises(AnalyzerError, match=r"board#0: HTTP 422: Unexpected fields in the request: \{'structured_outputs'\}"):
        analyzer.analyze([board_region(i) for i in range(3)])
    time.sleep(0.5)
    # A 4xx is not retried; the regions not yet sent are cancelled (at most the other two already in flight went out).
    assert 1 <= server.text().count('"POST /v1/chat/completions HTTP/1.1" 422') - refusals <= 3
    analyzer.close()


@pytest.mark.integration
def test_a_slow_answer_is_retried_then_reported_as_a_timeout(server):
    analyzer = OpenAIAnalyzer(server.config(timeout_s=0.05, max_retries=1, concurrency=1, max_tokens=64), CLASSES)
    before = server.requests_received()
    started = time.perf_counter()
    with pytest.raises(AnalyzerError, match=r"board#0: no answer within 0.05 s \(2 tries\)"):
        analyzer.analyze([board_region(i) for i in range(3)])
    assert time.perf_counter() - started < 10
    assert server.wait_for_requests(before + 2) == before + 2  # one try and one retry, and no other region sent
    time.sleep(1)
    assert server.requests_received() == before + 2
    analyzer.close()


@pytest.mark.integration
def test_no_more_requests_are_in_flight_than_the_concurrency_limit(server):
    analyzer = OpenAIAnalyzer(server.config(concurrency=2), CLASSES)
    send, lock, in_flight, most = analyzer.complete, threading.Lock(), [0], [0]

    def counted(messages, cost=None):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            return send(messages, cost)
        finally:
            with lock:
                in_flight[0] -= 1

    analyzer.complete = counted
    before = server.requests_received()
    with pytest.raises(AnalyzerError, match=r"5 of 5 regions failed: board#0: invalid answer: .*; and 2 more$"):
        analyzer.analyze([board_region(i) for i in range(5)])
    assert most[0] == 2 and server.requests_received() == before + 5
    analyzer.close()


@pytest.mark.integration
def test_aivd_inspect_with_the_openai_backend_keeps_the_edge_results_and_records_why(server, tmp_path):
    config = tmp_path / "llm.yaml"
    config.write_text(f"base_url: {server.url}\nmodel: m\nstructured_output: none\nmax_tokens: 16\nconcurrency: 4\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "aivd.cli.main", "inspect", str(SAMPLES / "00041200_test.jpg"), "--out", str(out),
         "--cloud-backend", "openai", "--llm-config", str(config), "--llm-model", server.model],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "results.jsonl").read_text())
    assert record["status"] == "ok" and record["analyzer"] == f"openai:{server.model}"
    assert re.match(rf"openai:{re.escape(server.model)}: (\d+) of \1 regions failed: 00041200#0: invalid answer: ", record["cloud_error"])
    assert record["defects"] and {d["source"] for d in record["defects"]} == {"edge"} and record["bytes_to_cloud"] > 0
    assert "cloud unavailable for 1 images" in result.stderr


@pytest.mark.integration
def test_a_schema_enforcing_server_answers_the_schema_shape_and_out_of_range_values_are_still_refused(llama_server):
    analyzer = OpenAIAnalyzer(llama_server.config(structured_output="json_object", max_tokens=1024, concurrency=2), CLASSES)
    regions = [board_region(i) for i in range(3)]
    answers = [analyzer.complete(analyzer.messages(region)) for region in regions]
    for text in answers:  # the server held the random model to the schema's structure
        value = json.loads(text, strict=False)  # strict JSON forbids raw control characters in strings; the grammar does not
        assert list(value) == list(LLM_FIELDS)
        assert isinstance(value["is_defect"], bool) and value["defect_type"] in CLASSES
        assert value["severity"] in (None, "critical", "major", "minor") and all(isinstance(c, str) for c in value["likely_causes"])
        assert isinstance(value["confidence"], (int, float)) and isinstance(value["description"], str)

    # What the grammar leaves open is still refused: raw control characters in strings, numbers out of bounds.
    refused = {}
    for region, text in zip(regions, answers):
        try:
            parse_analysis(text, CLASSES)
        except AnswerError as error:
            refused[region.region_id] = str(error)
        else:
            assert 0 <= json.loads(text)["confidence"] <= 1
    assert refused, "this random model's answers break what the grammar does not enforce; all three should be refused"
    assert all(re.search("Invalid control character|confidence", reason) for reason in refused.values()), refused
    with pytest.raises(AnalyzerError, match=rf"{len(refused)} of 3 regions failed: {next(iter(refused))}: invalid answer: "):
        analyzer.analyze(regions)
    analyzer.close()
