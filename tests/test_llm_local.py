"""The `transformers` backend on a tiny randomly initialised Qwen2-VL built by the test (no downloaded weights):
the model files, the inputs it is given, and constrained decoding that makes every answer a valid record."""

import json
from dataclasses import replace

import pytest

pytest.importorskip("transformers", reason="the `vlm` extra is not installed")
pytest.importorskip("outlines", reason="the `vlm` extra is not installed")
torch = pytest.importorskip("torch", reason="the `train` extra is not installed")

from aivd.cloud.llm.prompts import AnswerError, build_messages, load_prompt, parse_analysis, region_images  # noqa: E402
from aivd.cloud.llm.tiny import build_tiny_vlm  # noqa: E402
from aivd.cloud.llm.transformers_backend import (  # noqa: E402
    IGNORE_INDEX,
    MAX_CAUSES,
    ConstrainedGenerator,
    TransformersAnalyzer,
    decoding_schema,
    load_vlm,
    structure_chars,
)
from aivd.cloud.measure import measure  # noqa: E402
from aivd.core import DEEPPCB_CLASSES  # noqa: E402
from aivd.core.regions import cut_regions  # noqa: E402
from aivd.data.synthetic import SyntheticConfig, generate_pair  # noqa: E402

CLASSES = tuple(DEEPPCB_CLASSES.names)
# The tightest bound the schema allows, so that a random model's answers (which run to the bound) stay short.
MAX_NEW_TOKENS = structure_chars(CLASSES) + 40
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_regions(count: int = 2, with_templates: bool = True):
    regions = []
    for index in range(count):
        pair = generate_pair(index, SyntheticConfig(size=192, n_defects=(2, 3)))
        regions += cut_regions(pair.test, pair.template if with_templates else None, pair.ground_truth, pair.image_id, 48.0)
    return regions


def test_tiny_vlm_is_small_deterministic_and_loads_offline(tiny_model, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    again, other = build_tiny_vlm(tmp_path / "again", seed=0), build_tiny_vlm(tmp_path / "other", seed=1)
    weights = (tiny_model / "model.safetensors").read_bytes()
    assert weights == (again / "model.safetensors").read_bytes()
    assert weights != (other / "model.safetensors").read_bytes()
    assert (tiny_model / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    assert sum(path.stat().st_size for path in tiny_model.iterdir()) < 4_000_000

    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert model.config.model_type == "qwen2_vl"
    assert AutoImageProcessor.from_pretrained(tiny_model).merge_size == 2
    for token, token_id in (("<|image_pad|>", model.config.image_token_id), ("<|vision_start|>", model.config.vision_start_token_id)):
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    # Trained on aivd's vocabulary, the tokenizer spends far fewer tokens than bytes on an answer.
    answer = '{"is_defect": true, "defect_type": "mousebite", "severity": "minor", "description": "Mouse bite"}'
    assert len(tokenizer(answer)["input_ids"]) < len(answer) / 2


def test_decoding_schema_admits_no_answer_longer_than_the_bound():
    bound = 400
    schema = decoding_schema(CLASSES, bound)
    fields = schema["properties"]

    def longest(pattern: str) -> int:
        return int(pattern.rsplit(",", 1)[1].split("}")[0])

    # The longest answer the schema admits, written with the most whitespace the decoder allows.
    answer = {
        "is_defect": False, "defect_type": max(CLASSES, key=len), "confidence": 0.01, "severity": "critical",
        "likely_causes": ["x" * longest(fields["likely_causes"]["items"]["pattern"])] * fields["likely_causes"]["maxItems"],
        "description": "x" * longest(fields["description"]["pattern"]),
        "recommended_action": "x" * longest(fields["recommended_action"]["pattern"]),
    }
    text = json.dumps(answer, separators=(" , ", " : ")).replace("{", "{ ").replace("}", " }").replace("[", "[ ").replace("]", " ]")
    assert len(text) <= bound
    assert fields["likely_causes"]["maxItems"] == MAX_CAUSES
    assert set(fields["confidence"]["enum"]) >= {0.0, 0.5, 0.87, 1.0}
    with pytest.raises(ValueError, match="max_new_tokens=100"):
        decoding_schema(CLASSES, 100)


def test_encoder_expands_images_and_labels_only_the_answer(tiny_model):
    model, encoder = load_vlm(tiny_model, device="cpu")
    prompt = load_prompt()
    first, second = synthetic_regions(1)[:2]
    regions = [first, replace(second, template=None)]  # the second is shown without a template
    answers = ['{"a": 1}', '{"b": 22}']
    batch = encoder.encode([build_messages(prompt, r, CLASSES) for r in regions], [region_images(r) for r in regions], answers)

    grid = batch["image_grid_thw"]
    assert len(grid) == 3  # two images for the first region, one for the second
    per_row = [int(grid[0].prod() + grid[1].prod()) // 4, int(grid[2].prod()) // 4]
    assert batch["mm_token_type_ids"].sum(dim=1).tolist() == per_row
    assert ((batch["input_ids"] == model.config.image_token_id).int() == batch["mm_token_type_ids"]).all()
    for row, answer in enumerate(answers):
        targets = batch["labels"][row] != IGNORE_INDEX
        assert encoder.tokenizer.decode(batch["labels"][row][targets]) == answer + "<|im_end|>"
        # Labels line up with the input (the model shifts them itself) and end where the row's tokens end.
        assert torch.equal(batch["input_ids"][row][targets], batch["labels"][row][targets])
        assert targets.nonzero().max() == batch["attention_mask"][row].sum() - 1
    # Training rows are padded on the right, generation rows on the left (they continue from their last token).
    mask = batch["attention_mask"]
    assert (mask.diff(dim=1) <= 0).all() and (mask[:, 0] == 1).all() and mask.sum() < mask.numel()
    prompts = encoder.encode([build_messages(prompt, r, CLASSES) for r in regions], [region_images(r) for r in regions])["attention_mask"]
    assert (prompts.diff(dim=1) >= 0).all() and (prompts[:, -1] == 1).all() and prompts.sum() < prompts.numel()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.integration
def test_constrained_decoding_makes_every_answer_a_valid_record(tiny_model):
    regions = synthetic_regions(2) + synthetic_regions(1, with_templates=False)
    analyzer = TransformersAnalyzer(tiny_model, device="cpu", max_new_tokens=MAX_NEW_TOKENS, batch_size=3)
    assert analyzer.name == f"transformers:{tiny_model.name}"
    assert analyzer.class_names == CLASSES

    analyses = analyzer.analyze(regions)
    assert len(analyses) == len(regions) >= 6
    for region, analysis in zip(regions, analyses):
        assert analysis.defect_type in CLASSES and 0 <= analysis.confidence <= 1
        assert analysis.measurements == measure(region)

    # Every raw answer parses strictly and fits the bound; without the constraint the same model's do not parse.
    generator = analyzer.generator
    chats = [build_messages(analyzer.prompt, r, CLASSES) for r in regions[:3]]
    images = [region_images(r) for r in regions[:3]]
    for answer in generator.generate(chats, images):
        assert len(answer) <= MAX_NEW_TOKENS
        parse_analysis(answer, CLASSES)
    batch = generator.encoder.encode(chats, images)
    with torch.no_grad():
        output = generator.model.generate(**batch, max_new_tokens=60, do_sample=False)
    for answer in generator.encoder.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True):
        with pytest.raises(AnswerError):
            parse_analysis(answer, CLASSES)


def test_generator_is_deterministic(tiny_model):
    model, encoder = load_vlm(tiny_model, device="cpu")
    generator = ConstrainedGenerator(model, encoder, CLASSES, MAX_NEW_TOKENS)
    region = synthetic_regions(1)[0]
    chat, images = [build_messages(load_prompt(), region, CLASSES)], [region_images(region)]
    first = generator.generate(chat, images)
    assert generator.generate(chat, images) == first
    parse_analysis(first[0], CLASSES)
