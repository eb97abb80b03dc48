"""The `transformers` backend: a local Hugging Face vision-language model (Qwen2-VL / Qwen2.5-VL family), with an
optional peft LoRA adapter, answering through constrained decoding.

Decoding is constrained by Outlines (its `outlines_core` backend) to a JSON Schema derived from the answer
schema (`decoding_schema`): besides the classes, it bounds every number and string, so that the longest answer
it admits has at most `max_new_tokens` characters. A token is at least one character, so every answer ends
before the token limit and parses (`parse_analysis`); a model that would ramble has its text cut short
instead. Real models answer with far fewer tokens than characters: give them room (the knowledge base's
answers are about 500 characters; the default `max_new_tokens=1024` keeps them whole and costs only what is
generated).

Inputs are built here from the model's tokenizer (chat template) and image processor, as the model's
processor would build them: transformers 5 cannot build a Qwen2-VL processor without torchvision (for its
video processor), and torchvision is not installable beside the project's CPU build of PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aivd.cloud.analyzer import Analyses, AnalyzerError
from aivd.cloud.knowledge import DEFAULT_KNOWLEDGE, KnowledgeBase
from aivd.cloud.llm.prompts import AnswerError, build_messages, load_prompt, parse_analysis, region_images
from aivd.cloud.measure import measure
from aivd.core import DEEPPCB_CLASSES, Region
from aivd.schema.analysis import analysis_json_schema

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

    class GenerativeModel(PreTrainedModel, GenerationMixin):
        """What `AutoModelForImageTextToText` loads: a model that generates (no single transformers class says so)."""

TRAINING_RECORD = "training.json"  # beside an adapter trained by `aivd finetune train`: its classes and prompt
MAX_CAUSES = 4
# How the characters left after the answer's fixed structure are shared among its free-text fields.
TEXT_SHARES = {"description": 0.35, "recommended_action": 0.2, "likely_causes": 0.45}
MIN_TEXT_CHARS = 40
WHITESPACE = " ?"  # at most one space where JSON allows whitespace: json.dumps's ", " and ": " and compact JSON
IGNORE_INDEX = -100  # the label of tokens the loss skips (the prompt, padding)


def plain_text(max_chars: int) -> str:
    """Printable ASCII without the quote and the backslash (no escapes, one byte a character), at most `max_chars`.
    The length is in the pattern because Outlines ignores a pattern beside maxLength."""
    return rf"^[ !#-\[\]-~]{{0,{max_chars}}}$"


def structure_chars(class_names: Sequence[str]) -> int:
    """The most characters an answer with empty texts can take under `decoding_schema`."""
    skeleton = json.dumps({
        "is_defect": False, "defect_type": max(class_names, key=len), "confidence": 0.01, "severity": "critical",
        "likely_causes": [""] * MAX_CAUSES, "description": "", "recommended_action": "",
    }, separators=(",", ":"))
    # Each structural character may have one space before and after it.
    return len(skeleton) + 2 * sum(skeleton.count(c) for c in "{}[]:,")


def decoding_schema(class_names: Sequence[str], max_chars: int) -> dict:
    """`analysis_json_schema` made finite: confidence in steps of 0.01, plain-text strings of bounded length, at most
    `MAX_CAUSES` causes, so that no admitted answer is longer than `max_chars` characters."""
    text = max_chars - structure_chars(class_names)
    if text < MIN_TEXT_CHARS:
        raise ValueError(f"max_new_tokens={max_chars} leaves {text} characters for the answer's text; "
                         f"at least {structure_chars(class_names) + MIN_TEXT_CHARS} are needed")
    schema = analysis_json_schema(list(class_names))
    fields = schema["properties"]
    fields["confidence"] = {**fields["confidence"], "enum": [round(i / 100, 2) for i in range(101)]}
    for name in ("description", "recommended_action"):
        fields[name] = {**fields[name], "pattern": plain_text(int(text * TEXT_SHARES[name]))}
    cause_chars = int(text * TEXT_SHARES["likely_causes"] / MAX_CAUSES)
    fields["likely_causes"] = {**fields["likely_causes"], "maxItems": MAX_CAUSES,
                               "items": {"type": "string", "pattern": plain_text(cause_chars)}}
    return schema


def choose_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class ChatEncoder:
    """Chats with image placeholders in, model inputs out: what the Qwen2-VL processor does, from the model's own
    tokenizer and image processor."""

    def __init__(self, model_dir: str | Path, image_token_id: int):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.image_processor = AutoImageProcessor.from_pretrained(model_dir)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model_dir}: the tokenizer has no chat template")
        self.image_token_id = image_token_id
        self.image_token = self.tokenizer.convert_ids_to_tokens(image_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.end_of_turn = self.tokenizer.eos_token  # Qwen's chat models end a turn with their EOS, <|im_end|>

    def prompt_ids(self, messages: list[dict], image_grid) -> list[int]:
        """Token ids of `messages` up to the assistant's turn, each image placeholder expanded to its tokens."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert isinstance(text, str) and isinstance(self.image_token, str)  # untokenized text; one id's token
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(image_grid):
            raise ValueError(f"the chat holds {len(pieces) - 1} image placeholders but {len(image_grid)} images were given")
        merge = self.image_processor.merge_size ** 2
        expanded = pieces[0] + "".join(self.image_token * (int(np.prod(grid)) // merge) + piece for grid, piece in zip(image_grid, pieces[1:]))
        return self.tokenizer(expanded, add_special_tokens=False)["input_ids"]

    def encode(self, chats: Sequence[list[dict]], images: Sequence[list[np.ndarray]], answers: Sequence[str] | None = None) -> dict:
        """A batch for generation: left-padded, each row ending where the assistant's answer starts. With `answers`, a
        batch for training: each answer and the end-of-turn token follow its prompt and are the only labelled tokens,
        and rows are right-padded (left padding would leave pad tokens that attend to nothing, which some attention
        kernels answer with NaN, poisoning the gradients)."""
        import torch

        flat = [_rgb(image) for row in images for image in row]
        vision = self.image_processor(images=flat, return_tensors="pt") if flat else {}
        grids = vision["image_grid_thw"].tolist() if flat else []
        rows, labels, start = [], [], 0
        for index, (messages, row_images) in enumerate(zip(chats, images)):
            ids = self.prompt_ids(messages, grids[start : start + len(row_images)])
            start += len(row_images)
            target = []
            if answers is not None:
                target = self.tokenizer(answers[index] + self.end_of_turn, add_special_tokens=False)["input_ids"]
            rows.append(ids + target)
            labels.append([IGNORE_INDEX] * len(ids) + target)
        width = max(len(row) for row in rows)

        def padded(row: list[int], value: int) -> list[int]:
            padding = [value] * (width - len(row))
            return row + padding if answers is not None else padding + row

        input_ids = torch.tensor([padded(row, self.pad_id) for row in rows])
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.tensor([padded([1] * len(row), 0) for row in rows]),
            "mm_token_type_ids": (input_ids == self.image_token_id).int(),
        }
        if flat:
            batch["pixel_values"] = vision["pixel_values"]
            batch["image_grid_thw"] = vision["image_grid_thw"]
        if answers is not None:
            batch["labels"] = torch.tensor([padded(row, IGNORE_INDEX) for row in labels])
        return batch


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def load_vlm(model: str | Path, adapter: str | Path | None = None, device: str = "auto", dtype=None):
    """The model (with `adapter` applied, when given) on `device`, in eval mode, and its `ChatEncoder`."""
    import torch
    from transformers import AutoModelForImageTextToText

    device = choose_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    # transformers wraps PreTrainedModel.to with functools.wraps, which type checkers read as an unbound function.
    network = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device)  # type: ignore[arg-type]
    if adapter is not None:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter)
    network.eval()
    return network, ChatEncoder(model, network.config.image_token_id)


@dataclass
class ConstrainedGenerator:
    """Greedy generation constrained to `decoding_schema(class_names, max_new_tokens)`."""

    model: GenerativeModel  # or a PEFT model around one, which forwards parameters() and generate()
    encoder: ChatEncoder
    class_names: tuple[str, ...]
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        import outlines
        from outlines.backends import get_json_schema_logits_processor

        schema = json.dumps(decoding_schema(self.class_names, self.max_new_tokens))
        self.constraint = get_json_schema_logits_processor(
            # outlines annotates the tokenizer as transformers 4's slow PreTrainedTokenizer; it takes any tokenizer.
            "outlines_core", outlines.from_transformers(self.model, self.encoder.tokenizer), schema, whitespace_pattern=WHITESPACE,  # type: ignore[arg-type]
        )

    def generate(self, chats: Sequence[list[dict]], images: Sequence[list[np.ndarray]]) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        batch = self.encoder.encode(chats, images)
        device = next(self.model.parameters()).device
        batch = {key: value.to(device) for key, value in batch.items()}
        self.constraint.reset()  # its parser state is per call
        with torch.no_grad():
            output = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, logits_processor=LogitsProcessorList([self.constraint]),
                pad_token_id=self.encoder.pad_id, eos_token_id=self.encoder.tokenizer.eos_token_id,
            )
        return self.encoder.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def adapter_record(adapter: str | Path | None) -> dict:
    """The training record `aivd finetune train` writes beside an adapter (its classes and prompt version), or {}."""
    if adapter is None:
        return {}
    for folder in (Path(adapter), Path(adapter).parent):
        if (folder / TRAINING_RECORD).is_file():
            return json.loads((folder / TRAINING_RECORD).read_text())
    return {}


class TransformersAnalyzer:
    """A local vision-language model as the cloud tier. The classes, unless `class_names` is given, and the prompt
    version, unless `prompt` is, are those the adapter was trained with (`adapter_record`), else DeepPCB's and the
    newest. `knowledge` gives the prompt the classes' one-line descriptions and what is inspected; `pcb_facts`
    adds the copper and conductor measurements (for PCB domains). Measurements are aivd's own, as in every
    backend."""

    def __init__(
        self, model: str | Path, adapter: str | Path | None = None, prompt: str | None = None, device: str = "auto",
        max_new_tokens: int = 1024, batch_size: int = 4, class_names: Sequence[str] | None = None,
        knowledge: str | Path | KnowledgeBase = DEFAULT_KNOWLEDGE, pcb_facts: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name = f"transformers:{Path(model).name}"
        trained = adapter_record(adapter)
        self.prompt = load_prompt(prompt or trained.get("prompt"))
        self.class_names = tuple(class_names or trained.get("class_names", DEEPPCB_CLASSES.names))
        self.knowledge = knowledge if isinstance(knowledge, KnowledgeBase) else KnowledgeBase.load(knowledge)
        self.pcb_facts = pcb_facts
        self.batch_size = batch_size
        network, encoder = load_vlm(model, adapter, device)
        self.generator = ConstrainedGenerator(network, encoder, self.class_names, max_new_tokens)

    def analyze(self, regions: Sequence[Region]) -> Analyses:
        analyses = Analyses()
        for start in range(0, len(regions), self.batch_size):
            batch = regions[start : start + self.batch_size]
            try:
                answers = self.generator.generate(
                    [build_messages(self.prompt, region, self.class_names, self.knowledge) for region in batch], [region_images(region) for region in batch],
                )
            except Exception as error:  # torch and transformers raise many types; a bad batch must not end the caller's run
                raise AnalyzerError(f"{self.name}: generation failed: {type(error).__name__}: {error}") from None
            for region, answer in zip(batch, answers):
                try:
                    analysis = parse_analysis(answer, self.class_names)
                except AnswerError as error:
                    raise AnalyzerError(f"{self.name}: region {region.region_id}: {error}") from None
                analyses.append(analysis.model_copy(update={"measurements": measure(region, pcb_facts=self.pcb_facts)}))
        return analyses

    def close(self) -> None:
        pass
