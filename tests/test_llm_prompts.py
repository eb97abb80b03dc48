"""Prompts for multimodal-LLM backends and the strict parsing of their answers (no model, no server)."""

import base64
import json
from dataclasses import replace

import numpy as np
import pytest

from aivd.cloud.knowledge import KnowledgeBase
from aivd.cloud.knowledge_scaffold import scaffold_knowledge
from aivd.cloud.llm.prompts import (
    AnswerError,
    PromptError,
    build_messages,
    format_answer,
    load_prompt,
    parse_analysis,
    region_images,
    shipped_versions,
    to_openai_messages,
)
from aivd.core import DEEPPCB_CLASSES, Region
from aivd.schema.analysis import LLM_FIELDS, Severity, analysis_json_schema

CLASSES = DEEPPCB_CLASSES.names
VALID = {"is_defect": True, "defect_type": "short", "confidence": 0.8, "severity": "critical",
         "likely_causes": ["under-etching"], "description": "Copper bridges two tracks.", "recommended_action": "Reject the board."}


def region(template: bool = True) -> Region:
    image = np.full((48, 64), 255, np.uint8)
    return Region("board#3", image, image.copy() if template else None, (10.4, 12.0, 30.0, 20.6), (100, 200), "spur", 0.4567)


def answer(**changes) -> str:
    return json.dumps(VALID | changes)


def test_the_newest_shipped_prompt_is_the_default_and_versions_load_by_name():
    assert shipped_versions()[0] == "v1"
    assert load_prompt().version == shipped_versions()[-1]
    assert load_prompt("v1").version == "v1"
    with pytest.raises(PromptError, match="no shipped prompt version 'v99'; shipped: v1, v2"):
        load_prompt("v99")


@pytest.mark.parametrize("content, problem", [
    ("version: v9\nsystem: s\nuser: '{box} {where}'\n", r"user: Value error, unknown fields \['where'\]"),
    ("version: v9\nsystem: s\nuser: 'a { b'\n", "user: Value error, not a valid format string"),
    ("version: v9\nsystem: 'inspecting {box}'\nuser: u\n", r"system: Value error, unknown fields \['box'\]"),
    ("version: v9\nsystem: s\n", "user: Field required"),
    ("version: v9\nsystem: s\nuser: u\ntone: friendly\n", "tone: Extra inputs are not permitted"),
    ("version: v9\nsystem: s\nuser: u\nfew_shot:\n  - user: q\n    answer: {is_defect: true}\n", r"few_shot.0.answer: .*missing \['defect_type'"),
    ("version: [v9\n", "not valid YAML"),
])
def test_a_bad_prompt_file_is_refused_with_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "mine.yaml"
    path.write_text(content)
    with pytest.raises(PromptError, match=f"{path}: .*{problem}"):
        load_prompt(path)
    with pytest.raises(PromptError, match="cannot read"):
        load_prompt(tmp_path / "absent.yaml")


def test_messages_show_the_test_crop_then_the_template_and_say_what_the_edge_saw():
    with_template, alone = region(), region(template=False)
    assert [id(a) for a in region_images(with_template)] == [id(with_template.image), id(with_template.template)]
    assert len(region_images(alone)) == 1 and region_images(alone)[0].dtype == np.uint8

    system, user = build_messages(load_prompt("v1"), with_template, CLASSES)
    assert system["role"] == "system" and "quality engineer" in system["content"][0]["text"]
    assert user["role"] == "user" and [part["type"] for part in user["content"]] == ["image", "image", "text"]
    text = user["content"][-1]["text"]
    assert '"spur" with score 0.46' in text and "10, 12, 30, 21" in text and "64 x 48 crop" in text
    assert "image 2 is the same window of the defect-free template" in text
    assert "- short: Short circuit: copper bridges" in text  # the knowledge base's summary of each class
    schema = json.loads(text[text.index('{"$defs"'):])
    assert schema == analysis_json_schema(CLASSES)

    *_, user = build_messages(load_prompt("v1"), alone, ["open", "scratch"])
    assert [part["type"] for part in user["content"]] == ["image", "text"]
    assert "there is no defect-free template" in user["content"][-1]["text"]
    assert "- scratch\n" in user["content"][-1]["text"]  # a class the knowledge base does not know is still offered


def test_few_shot_turns_come_before_the_question_and_must_answer_an_allowed_class(tmp_path):
    path = tmp_path / "shots.yaml"
    path.write_text(
        "version: shots-1\nsystem: s\nuser: '{edge_class}'\n"
        f"few_shot:\n  - user: 'An example.'\n    answer: {json.dumps(VALID)}\n"
    )
    prompt = load_prompt(path)
    roles = [message["role"] for message in build_messages(prompt, region(), CLASSES)]
    assert roles == ["system", "user", "assistant", "user"]
    shot = build_messages(prompt, region(), CLASSES)[2]["content"][0]["text"]
    assert parse_analysis(shot, CLASSES).defect_type == "short" and list(json.loads(shot)) == list(LLM_FIELDS)
    with pytest.raises(PromptError, match=r"few_shot.0 answers class 'short', which is not among the classes \['open'\]"):
        build_messages(prompt, region(), ["open"])


def test_prompts_for_other_classes_take_the_subject_and_summaries_from_the_knowledge_base(tmp_path):
    neu_det = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    path = tmp_path / "neu.yaml"
    path.write_text(scaffold_knowledge("neu-det", neu_det, {}))
    steel = replace(region(template=False), edge_class="scratches")
    system, user = build_messages(load_prompt(), steel, neu_det, KnowledgeBase.load(path))
    system, text = system["content"][0]["text"], user["content"][-1]["text"]
    assert system.startswith("You are a quality engineer inspecting industrial parts.")
    assert all(f"- {name}: TODO: describe the {name} defect" in text for name in neu_det)
    assert json.loads(text[text.index('{"$defs"'):])["properties"]["defect_type"]["enum"] == neu_det
    for pcb_word in ("circuit", "board", "pcb", "copper", "conductor", "etch", "open", "short", "spur", "mousebite"):
        assert pcb_word not in (system + text).lower(), pcb_word


def test_the_deeppcb_knowledge_base_keeps_the_boards_and_v1_stays_as_released():
    system, _ = build_messages(load_prompt(), region(), CLASSES)
    assert system["content"][0]["text"].startswith("You are a quality engineer inspecting bare printed circuit boards.")
    released = load_prompt("v1")
    assert build_messages(released, region(), CLASSES)[0]["content"][0]["text"] == released.system


def test_openai_messages_inline_the_images_in_order_as_png_data_urls():
    messages = build_messages(load_prompt(), region(), CLASSES)
    converted = to_openai_messages(messages, [b"first", b"second"])
    assert converted[0] == {"role": "system", "content": messages[0]["content"][0]["text"]}
    first, second, text = converted[1]["content"]
    assert first["type"] == "image_url" and first["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(b"first").decode()
    assert base64.b64decode(second["image_url"]["url"].split(",", 1)[1]) == b"second"
    assert text == messages[1]["content"][-1]
    with pytest.raises(ValueError, match="2 image placeholders but 1 images"):
        to_openai_messages(messages, [b"first"])


def test_a_valid_answer_parses_into_an_analysis():
    analysis = parse_analysis(answer(), CLASSES)
    assert analysis.defect_type == "short" and analysis.severity is Severity.critical and analysis.measurements is None
    assert parse_analysis(f"  {answer(is_defect=False, severity=None, confidence=1)}\n", CLASSES).confidence == 1.0
    assert json.loads(format_answer(analysis)) == VALID


@pytest.mark.parametrize("text, problem", [
    ("", "not JSON"),
    ('```json\n{"is_defect": true}\n```', "not JSON"),
    ('{"is_defect": true, "defect_type": "sh', "not JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    (answer(defect_type="scratch"), r"defect_type 'scratch' is not one of \['open'"),
    (json.dumps({k: v for k, v in VALID.items() if k != "severity"}), r"missing \['severity'\]"),
    (answer(measurements={"width_px": 3}), r"unexpected \['measurements'\]"),
    (answer()[:-1] + ', "confidence": 0.1}', r"repeats keys \['confidence'\]"),
    (answer(confidence="0.8"), "confidence: Input should be a valid number"),
    (answer(confidence=1.5), "confidence: Input should be less than or equal to 1"),
    (answer().replace("0.8", "NaN"), "holds NaN"),
    (answer(severity="fatal"), "severity"),
    (answer(is_defect="yes"), "is_defect: Input should be a valid boolean"),
    (answer(likely_causes="etching"), "likely_causes: Input should be a valid array"),
])
def test_an_invalid_answer_is_refused_saying_why_and_quoting_it(text, problem):
    with pytest.raises(AnswerError, match=problem) as caught:
        parse_analysis(text, CLASSES)
    assert repr(text[:40])[:-1] in str(caught.value)
