"""`aivd finetune build` and `aivd finetune train` on synthetic data and a tiny VLM built by the test."""

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="the `vlm` extra is not installed")
pytest.importorskip("peft", reason="the `vlm` extra is not installed")
pytest.importorskip("albumentations", reason="the `vlm` extra is not installed")
torch = pytest.importorskip("torch", reason="the `train` extra is not installed")

from aivd.cli.main import app  # noqa: E402
from aivd.cloud.knowledge_scaffold import scaffold_knowledge  # noqa: E402
from aivd.cloud.llm.prompts import parse_analysis  # noqa: E402
from aivd.cloud.llm.transformers_backend import TransformersAnalyzer, load_vlm, structure_chars  # noqa: E402
from aivd.core import DEEPPCB_CLASSES  # noqa: E402
from aivd.data.deeppcb import load_split  # noqa: E402
from aivd.data.synthetic import SyntheticConfig, generate_pair, write_dataset  # noqa: E402
from aivd.training.finetune_data import FinetuneDataConfig, build_finetune_data  # noqa: E402
from aivd.training.lora import ADAPTER_DIR, LoraTrainConfig, add_lora, load_chats, lora_l2, train_lora  # noqa: E402

CLASSES = tuple(DEEPPCB_CLASSES.names)
NEU_DET = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
MAX_NEW_TOKENS = structure_chars(CLASSES) + 40
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, 6, SyntheticConfig(size=192, n_defects=(2, 3)), layout="deeppcb")
    return root


@pytest.fixture(scope="session")
def tiny_data(synthetic_root, tmp_path_factory):
    """Chats from two synthetic images (one held out), no negatives: a set the tiny model can overfit."""
    out = tmp_path_factory.mktemp("data") / "chats"
    build_finetune_data(load_split(synthetic_root, "trainval")[:2], CLASSES, out, FinetuneDataConfig(negatives=0, pixels_per_mm=48.0), "test")
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_writes_trl_chats_and_llamafactory_export(synthetic_root, tmp_path):
    samples = load_split(synthetic_root, "trainval")
    manifest = build_finetune_data(samples, CLASSES, tmp_path / "out", FinetuneDataConfig(copies=2, negatives=1, pixels_per_mm=48.0), "test")
    out = tmp_path / "out"
    boxes = sum(len(sample.ground_truth()) for sample in samples)
    assert manifest["defect"] == 2 * boxes and manifest["no_defect"] == len(samples)
    assert manifest["class_names"] == list(CLASSES) and manifest["prompt"] == "v2" and manifest["skipped"] == []

    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "val.jsonl")
    assert len(train) == manifest["examples"]["train"] and len(val) == manifest["examples"]["val"] > 0
    verdicts = []
    for record in train + val:
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        placeholders = [part for part in record["messages"][1]["content"] if part["type"] == "image"]
        assert len(placeholders) == len(record["images"]) in (1, 2)
        assert all((out / name).is_file() for name in record["images"])
        answer = parse_analysis(record["messages"][2]["content"][0]["text"], CLASSES)
        verdicts.append(answer.is_defect)
        if answer.is_defect:
            assert answer.severity is not None and answer.likely_causes and "mm" in answer.description
    assert verdicts.count(False) == len(samples)
    # Some edge classes in the prompts are wrong, as the edge's are, and some crops lose their template.
    user_texts = [r["messages"][1]["content"][-1]["text"] for r in train + val]
    assert any("there is no defect-free template" in text for text in user_texts)

    info = json.loads((out / "dataset_info.json").read_text())
    for entry in info.values():
        exported = json.loads((out / entry["file_name"]).read_text())
        assert entry["formatting"] == "sharegpt"
        for record in exported:
            user = next(m for m in record["messages"] if m["role"] == "user")
            assert user["content"].count("<image>") == len(record["images"])
    assert sum(len(json.loads((out / e["file_name"]).read_text())) for e in info.values()) == len(train) + len(val)


def test_build_is_deterministic_per_seed(synthetic_root, tmp_path):
    samples = load_split(synthetic_root, "trainval")[:2]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_finetune_data(samples, CLASSES, tmp_path / name, FinetuneDataConfig(seed=seed), "test")
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    images = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert all((tmp_path / "a" / "images" / n).read_bytes() == (tmp_path / "b" / "images" / n).read_bytes() for n in images)
    assert (tmp_path / "a" / "train.jsonl").read_text() != (tmp_path / "c" / "train.jsonl").read_text()


def test_build_reports_and_skips_bad_files(synthetic_root, tmp_path):
    root = tmp_path / "broken"
    write_dataset(root, 6, SyntheticConfig(size=192, n_defects=(2, 3)), layout="deeppcb")
    samples = load_split(root, "trainval")
    # Broken after loading (the loader already leaves out files it cannot read): undecodable, then truncated.
    samples[0].image_path.write_bytes(b"not an image")
    samples[1].image_path.write_bytes(samples[1].image_path.read_bytes()[:-200])
    reported = []
    manifest = build_finetune_data(samples, CLASSES, tmp_path / "out", FinetuneDataConfig(), "test", report=reported.append)
    assert [item["image"] for item in manifest["skipped"]] == [str(samples[0].image_path), str(samples[1].image_path)]
    assert len(reported) == 2 and reported[0].startswith(f"error: {samples[0].image_path}: ")
    assert "truncated" in manifest["skipped"][1]["reason"]
    assert manifest["images"] == len(samples) - 2 and sum(manifest["examples"].values()) > 0


@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_cli_builds_from_voc_and_yolo_layouts(layout, tmp_path):
    root = tmp_path / layout
    write_dataset(root, 3, SyntheticConfig(size=192, n_defects=(2, 3)), layout=layout)
    result = runner.invoke(app, ["finetune", "build", f"--{layout}", str(root), "--out", str(tmp_path / "out"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["source"].startswith(f"{layout}:") and manifest["config"]["seed"] == 3
    assert read_jsonl(tmp_path / "out" / "train.jsonl")
    # The out folder now holds data: a second build there is refused rather than mixed in.
    again = runner.invoke(app, ["finetune", "build", f"--{layout}", str(root), "--out", str(tmp_path / "out")])
    assert again.exit_code == 2 and "not empty" in again.output


def test_cli_builds_for_classes_of_another_domain_with_their_knowledge_base(tmp_path):
    """A VOC set whose six classes are NEU-DET's steel defects: the answers and prompts come from its own knowledge
    base, and nothing in them is about circuit boards."""
    root = tmp_path / "steel"
    write_dataset(root, 3, SyntheticConfig(size=192, n_defects=(2, 3)), layout="voc")
    renamed = dict(zip(CLASSES, NEU_DET))
    for xml in (root / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for pcb, steel in renamed.items():
            text = text.replace(f"<name>{pcb}</name>", f"<name>{steel}</name>")
        xml.write_text(text)
    knowledge = tmp_path / "steel.yaml"
    knowledge.write_text(scaffold_knowledge("steel", NEU_DET, {}))
    command = ["finetune", "build", "--voc", str(root), "--out", str(tmp_path / "out"), "--no-pcb-facts"]
    refused = runner.invoke(app, command)  # DeepPCB's knowledge base has no text for these classes
    assert refused.exit_code == 2 and "are not in the knowledge base" in refused.output and "aivd kb init" in refused.output
    result = runner.invoke(app, [*command, "--knowledge", str(knowledge)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert set(manifest["class_names"]) <= set(NEU_DET) and manifest["config"]["knowledge"] == str(knowledge)
    records = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "val.jsonl")
    assert records
    for record in records:
        system, user, reply = (message["content"][-1]["text"] for message in record["messages"])
        answer = parse_analysis(reply, NEU_DET)
        assert "inspecting industrial parts" in system and all(f"- {name}: TODO" in user for name in manifest["class_names"])
        assert answer.recommended_action.startswith("TODO") or not answer.is_defect
        for pcb_word in ("circuit", "board", "copper", "conductor"):
            assert pcb_word not in (system + user + reply).lower(), pcb_word


def test_cli_needs_exactly_one_data_set(tmp_path):
    result = runner.invoke(app, ["finetune", "build", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "exactly one data set" in result.output


@pytest.mark.integration
def test_build_from_deeppcb(deeppcb_root, tmp_path):
    result = runner.invoke(app, ["finetune", "build", "--deeppcb", str(deeppcb_root), "--limit", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["images"] == 3 and manifest["config"]["pixels_per_mm"] == 48.0
    for record in read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "val.jsonl"):
        assert parse_analysis(record["messages"][-1]["content"][0]["text"], CLASSES).defect_type in CLASSES


def test_lora_starts_from_the_base_model_with_zero_b(tiny_model, tiny_data):
    model, encoder = load_vlm(tiny_model, device="cpu")
    chat = load_chats(tiny_data, "train.jsonl")[0]
    batch = encoder.encode([chat.messages], [chat.pictures()], [chat.answer])
    with torch.no_grad():
        base_logits = model(**batch).logits
    adapted = add_lora(model, LoraTrainConfig(rank=4, alpha=8))
    lora = {name: p for name, p in adapted.named_parameters() if "lora_" in name}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all((p == 0).all() for name, p in lora.items() if "lora_B" in name)
    assert all(p.abs().sum() > 0 for name, p in lora.items() if "lora_A" in name)
    # Only language-model projections are adapted; the vision tower and the rest stay frozen.
    assert all("language_model" in name for name in lora)
    assert not any(p.requires_grad for name, p in adapted.named_parameters() if "lora_" not in name)
    assert adapted.peft_config["default"].lora_alpha / adapted.peft_config["default"].r == 2
    with torch.no_grad():
        assert torch.equal(adapted(**batch).logits, base_logits)
    expected = sum(p.pow(2).sum() for p in lora.values())
    assert torch.isclose(lora_l2(adapted), expected)


def lora_norm(adapter_dir):
    from safetensors.torch import load_file

    return float(sum(t.float().pow(2).sum() for t in load_file(adapter_dir / "adapter_model.safetensors").values()))


@pytest.mark.integration
def test_l2_penalty_keeps_the_lora_weights_smaller(tiny_model, tiny_data, tmp_path):
    common = dict(epochs=1, batch_size=2, grad_accum=1, lr=2e-2, dropout=0.0, max_new_tokens=MAX_NEW_TOKENS, eval_limit=1, threads=1, device="cpu")
    train_lora(tiny_data, tiny_model, tmp_path / "free", LoraTrainConfig(l2=0.0, **common))
    train_lora(tiny_data, tiny_model, tmp_path / "held", LoraTrainConfig(l2=1.0, **common))
    assert lora_norm(tmp_path / "held" / ADAPTER_DIR) < 0.9 * lora_norm(tmp_path / "free" / ADAPTER_DIR)


@pytest.mark.integration
def test_lora_overfits_a_tiny_set_and_the_adapter_loads_in_the_backend(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    config = LoraTrainConfig(epochs=6, batch_size=1, grad_accum=2, lr=2e-2, rank=16, alpha=32, dropout=0.0, l2=1e-4, patience=6,
                             max_new_tokens=MAX_NEW_TOKENS, eval_limit=2, threads=1, device="cpu")
    record = train_lora(tiny_data, tiny_model, out, config)
    losses = [epoch["loss"] for epoch in record["history"]]
    assert losses[-1] < 0.6 * losses[0]
    # Three chats, two per optimizer step: the last step of each epoch takes the odd one alone.
    assert record["train_chats"] == 3 and [epoch["steps"] for epoch in record["history"]] == [2, 4, 6, 8, 10, 12]
    assert all(epoch["val_valid"] == 1.0 for epoch in record["history"])
    assert record["mixed_precision"] == "no" and record["device"] == "cpu"
    saved = json.loads((out / "training.json").read_text())
    assert saved["class_names"] == list(CLASSES) and saved["best"]["epoch"] >= 1
    assert lora_norm(out / ADAPTER_DIR) > 0

    # The same seed trains the same adapter.
    again = train_lora(tiny_data, tiny_model, tmp_path / "again", config)
    assert [e["loss"] for e in again["history"]] == losses

    # The backend loads the adapter with the classes and prompt it was trained with, and its answers are valid.
    from aivd.core.regions import cut_regions

    pair = generate_pair(100, SyntheticConfig(size=192, n_defects=(2, 3)))
    regions = cut_regions(pair.test, pair.template, pair.ground_truth, pair.image_id, 48.0)
    analyzer = TransformersAnalyzer(tiny_model, adapter=out / ADAPTER_DIR, device="cpu", max_new_tokens=MAX_NEW_TOKENS)
    assert analyzer.class_names == CLASSES and analyzer.prompt.version == saved["prompt"]
    assert len(analyzer.analyze(regions)) == len(regions)
    base = TransformersAnalyzer(tiny_model, device="cpu", max_new_tokens=MAX_NEW_TOKENS)
    chats = [chat for chat in load_chats(tiny_data, "train.jsonl")[:2]]
    answers = [g.generate([c.messages for c in chats], [c.pictures() for c in chats]) for g in (analyzer.generator, base.generator)]
    assert answers[0] != answers[1]  # the adapter changed what the model says


@pytest.mark.integration
def test_early_stopping_waits_patience_epochs(tiny_model, tiny_data, tmp_path):
    config = LoraTrainConfig(epochs=6, batch_size=2, grad_accum=1, lr=1e-3, patience=1, max_new_tokens=MAX_NEW_TOKENS, eval_limit=2,
                             threads=1, device="cpu")
    record = train_lora(tiny_data, tiny_model, tmp_path / "run", config)
    accuracies = [epoch["val_accuracy"] for epoch in record["history"]]
    # Two validation chats allow three accuracies, so six epochs cannot all improve: the run stops after the
    # first epoch that does not beat the best, which is the one before it.
    assert record["stopped_early"] and len(accuracies) < 6
    best = max(accuracies)
    assert accuracies[-1] <= best and accuracies.index(best) == len(accuracies) - 2
    assert record["best"] == {"epoch": len(accuracies) - 1, "accuracy": best}


def test_train_refuses_data_without_a_manifest(tiny_model, tmp_path):
    result = runner.invoke(app, ["finetune", "train", "--data", str(tmp_path), "--model", str(tiny_model), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "aivd finetune build" in result.output
