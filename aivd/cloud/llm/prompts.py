"""What a multimodal LLM is asked about a region, and the strict parsing of what it answers.

A prompt is a versioned YAML data file (`prompts/v1.yaml`, ...): a system text, a user text with format fields
filled per region (the allowed classes, what the edge saw, where the box is, the answer's JSON Schema), and
optional text-only few-shot turns. Nothing about the domain is written in the code: the classes come from the
caller, their summaries and what is inspected (`{subject}`) from the knowledge base. Every backend, and the
fine-tuning data builder, builds its messages here, so a model is asked at inference exactly what it was
trained on.

The images shown to the model are the region's own crops, as the edge cut them: 2-D uint8 greyscale arrays,
the test crop first, then the template crop when there is one (`region_images`). Messages are in the chat
format Hugging Face processors and TRL read (`{"type": "image"}` placeholders, one per image, in order);
`to_openai_messages` turns them into OpenAI chat messages with the images inlined as PNG data URLs.

An answer is accepted only when it is one JSON object with exactly `LLM_FIELDS`, valid as a `DefectAnalysis`,
with `defect_type` among the allowed classes (`parse_analysis`); anything else is an `AnswerError` that says
why and quotes the answer's start.
"""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeBase
from aivd.core import Region
from aivd.core.errors import AivdError
from aivd.data.yaml_files import first_problem, read_yaml_mapping
from aivd.schema.analysis import LLM_FIELDS, DefectAnalysis, analysis_json_schema

PROMPTS_DIR = Path(__file__).parent / "prompts"
SYSTEM_FIELDS = frozenset({"subject"})
USER_FIELDS = SYSTEM_FIELDS | {"classes", "class_names", "images", "has_template", "crop_size", "box", "edge_class", "edge_score", "schema"}
EXCERPT_CHARS = 120


class PromptError(AivdError, ValueError):
    """A prompt file or version that cannot be used; the message names it and the problem."""


class AnswerError(AivdError, ValueError):
    """A model's answer that is not a valid `DefectAnalysis`; the message says why and quotes its start."""


class FewShotExample(BaseModel):
    """One text-only example turn: the user's words and the complete answer the model should give."""

    model_config = ConfigDict(extra="forbid")
    user: str
    answer: dict[str, Any]

    @field_validator("answer")
    @classmethod
    def _complete_answer(cls, answer: dict) -> dict:
        _check_fields(answer)
        DefectAnalysis.model_validate(answer)
        return answer


def _format_fields(text: str, allowed: frozenset[str]) -> str:
    """`text` when it is a valid format string whose fields are all in `allowed`; else a ValueError saying why."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:  # an unmatched brace
        raise ValueError(f"not a valid format string ({error}); write literal braces as {{{{ and }}}}") from None
    unknown = fields - allowed
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    return text


class PromptTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    system: str  # a format string with SYSTEM_FIELDS
    user: str  # a format string; see USER_FIELDS and the comment at the top of prompts/v2.yaml
    few_shot: list[FewShotExample] = []

    @field_validator("system")
    @classmethod
    def _known_system_fields(cls, system: str) -> str:
        return _format_fields(system, SYSTEM_FIELDS)

    @field_validator("user")
    @classmethod
    def _known_user_fields(cls, user: str) -> str:
        return _format_fields(user, USER_FIELDS)


def shipped_versions() -> list[str]:
    """The prompt versions in the package, oldest first ("v1", "v2", ..., compared by number)."""
    names = [path.stem for path in PROMPTS_DIR.glob("v*.yaml") if re.fullmatch(r"v\d+", path.stem)]
    return sorted(names, key=lambda name: int(name[1:]))


def load_prompt(source: str | Path | None = None) -> PromptTemplate:
    """A shipped version by name ("v1"), the newest shipped one when `source` is None, or a YAML file."""
    if source is None:
        source = shipped_versions()[-1]
    if isinstance(source, str) and re.fullmatch(r"v\d+", source):
        path = PROMPTS_DIR / f"{source}.yaml"
        if not path.is_file():
            raise PromptError(f"no shipped prompt version {source!r}; shipped: {', '.join(shipped_versions())}")
        prompt = _load_file(path)
        if prompt.version != source:
            raise PromptError(f"{path}: version is {prompt.version!r}, but the file is named {source}")
        return prompt
    return _load_file(Path(source))


def _load_file(path: Path) -> PromptTemplate:
    raw = read_yaml_mapping(path, PromptError)
    try:
        return PromptTemplate.model_validate(raw)
    except ValidationError as error:
        raise PromptError(first_problem(error, str(path))) from None


def region_images(region: Region) -> list[np.ndarray]:
    """The images shown to the model, in order: the test crop, then the template crop when there is one
    (2-D uint8 greyscale, as the edge cut them)."""
    return [region.image] if region.template is None else [region.image, region.template]


@lru_cache(maxsize=4)
def _knowledge(path: Path) -> KnowledgeBase:
    return KnowledgeBase.load(path)


def system_text(prompt: PromptTemplate, knowledge: KnowledgeBase | None = None) -> str:
    """The prompt's system text filled in from `knowledge` (default: DeepPCB's knowledge base)."""
    knowledge = knowledge or _knowledge(DEFAULT_KNOWLEDGE)
    return prompt.system.format(subject=knowledge.subject)


def user_text(prompt: PromptTemplate, region: Region, class_names: Sequence[str], knowledge: KnowledgeBase | None = None) -> str:
    """The prompt's user text filled in for `region`, the classes' summaries and the subject from `knowledge`
    (default: DeepPCB's knowledge base)."""
    knowledge = knowledge or _knowledge(DEFAULT_KNOWLEDGE)
    described = [
        f"- {name}: {knowledge.classes[name].summary}" if name in knowledge.classes else f"- {name}" for name in class_names
    ]
    height, width = region.image.shape
    if region.template is None:
        images = "The image is the test crop around the candidate; there is no defect-free template for it."
    else:
        images = ("Image 1 is the test crop around the candidate; image 2 is the same window of the defect-free template, "
                  "aligned pixel for pixel.")
    return prompt.user.format(
        classes="\n".join(described), class_names=", ".join(class_names), images=images,
        has_template="no" if region.template is None else "yes", crop_size=f"{width} x {height}",
        box=", ".join(f"{v:.0f}" for v in region.box), edge_class=region.edge_class, edge_score=f"{region.edge_confidence:.2f}",
        schema=json.dumps(analysis_json_schema(list(class_names)), separators=(",", ":")), subject=knowledge.subject,
    )


def build_messages(
    prompt: PromptTemplate, region: Region, class_names: Sequence[str], knowledge: KnowledgeBase | None = None,
) -> list[dict]:
    """The chat for one region (Hugging Face / TRL format): system, the few-shot turns, then the user turn with one
    `{"type": "image"}` placeholder per `region_images` entry, in order, before the text. `knowledge` gives the
    classes' one-line summaries and what is inspected (default: DeepPCB's knowledge base)."""
    if not class_names:
        raise ValueError("class_names is empty: the model needs at least one class to choose from")
    messages = [{"role": "system", "content": [{"type": "text", "text": system_text(prompt, knowledge)}]}]
    for index, example in enumerate(prompt.few_shot):
        if example.answer["defect_type"] not in class_names:
            raise PromptError(f"prompt {prompt.version}: few_shot.{index} answers class {example.answer['defect_type']!r}, "
                              f"which is not among the classes {list(class_names)}")
        messages.append({"role": "user", "content": [{"type": "text", "text": example.user}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": format_answer(example.answer)}]})
    placeholders = [{"type": "image"} for _ in region_images(region)]
    messages.append({"role": "user", "content": [*placeholders, {"type": "text", "text": user_text(prompt, region, class_names, knowledge)}]})
    return messages


def format_answer(analysis: DefectAnalysis | dict) -> str:
    """The answer a model should give, as compact JSON with `LLM_FIELDS` in order (for few-shot turns and training targets)."""
    if not isinstance(analysis, DefectAnalysis):
        analysis = DefectAnalysis.model_validate(analysis)
    values = analysis.model_dump(mode="json")
    return json.dumps({name: values[name] for name in LLM_FIELDS}, ensure_ascii=False)


def to_openai_messages(messages: list[dict], images_png: list[bytes]) -> list[dict]:
    """OpenAI chat messages: image placeholders become PNG data URLs (in order); a content of text parts only
    becomes one string, which every OpenAI-compatible server accepts (some refuse part lists for system turns)."""
    placeholders = sum(part.get("type") == "image" for message in messages for part in message["content"])
    if placeholders != len(images_png):
        raise ValueError(f"the messages hold {placeholders} image placeholders but {len(images_png)} images were given")
    images = iter(images_png)
    converted = []
    for message in messages:
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(next(images)).decode("ascii")}}
            if part["type"] == "image" else {"type": "text", "text": part["text"]}
            for part in message["content"]
        ]
        if all(part["type"] == "text" for part in parts):
            converted.append({"role": message["role"], "content": "\n\n".join(part["text"] for part in parts)})
        else:
            converted.append({"role": message["role"], "content": parts})
    return converted


def _excerpt(text: str) -> str:
    return repr(text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else ""))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise AnswerError(f"answer repeats keys {repeated}")
    return dict(pairs)


def _no_constants(name: str) -> None:
    raise AnswerError(f"answer holds {name}, which is not JSON")


def _check_fields(value: Any) -> None:
    if not isinstance(value, dict):
        raise AnswerError(f"answer is a JSON {type(value).__name__}, not an object")
    missing = [name for name in LLM_FIELDS if name not in value]
    extra = sorted(set(value) - set(LLM_FIELDS))
    if missing or extra:
        problems = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise AnswerError(f"answer fields: {'; '.join(problems)}")


def parse_analysis(text: str, class_names: Sequence[str]) -> DefectAnalysis:
    """The `DefectAnalysis` in a model's answer: one JSON object with exactly `LLM_FIELDS`, its values of the
    schema's types (no coercion: "0.9" is not a number), `defect_type` among `class_names`. Anything else
    raises `AnswerError`, quoting the answer's start."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        _check_fields(value)
        if value["defect_type"] not in class_names:
            raise AnswerError(f"defect_type {value['defect_type']!r} is not one of {list(class_names)}")
        return DefectAnalysis.model_validate_json(text, strict=True)
    except json.JSONDecodeError as error:
        raise AnswerError(f"answer is not JSON: {error.msg} (character {error.pos}): {_excerpt(text)}") from None
    except AnswerError as error:
        raise AnswerError(f"{error}: {_excerpt(text)}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise AnswerError(f"answer field {where}: {first['msg']}: {_excerpt(text)}") from None
