"""`open_data` on data sets as users have them (YOLO, VOC, COCO, DeepPCB), their problems, the seeded hold-out,
and `aivd data check`."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from aivd.cli.main import app
from aivd.core import DEEPPCB_CLASSES
from aivd.data.dataset import DataSplit, Sample, hold_out
from aivd.data.deeppcb import holdout_split
from aivd.data.sources import DatasetError, open_data
from aivd.data.synthetic import SyntheticConfig, generate_pair, write_dataset
from tests.conftest import blank_image, write_file

CONFIG = SyntheticConfig(size=160, n_defects=(2, 3))
COUNT = 6  # pairs 2 and 5 are the held-out ones (DeepPCB/VOC test, YOLO/COCO val)
runner = CliRunner()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same synthetic pairs written in every layout `aivd synth` knows."""
    base = tmp_path_factory.mktemp("layouts")
    for layout in ("deeppcb", "voc", "yolo", "coco"):
        write_dataset(base / layout, COUNT, CONFIG, layout)
    return base


def _copy(layouts, layout, tmp_path):
    return shutil.copytree(layouts / layout, tmp_path / layout)


def _all_samples(source) -> dict[str, Sample]:
    samples = {}
    for name in source.split_names():
        split = source.split(name)
        assert split.problems == [], split.problems
        samples.update((sample.image_id, sample) for sample in split.samples)
    return samples


def _assert_generator_boxes(samples: dict[str, Sample], atol: float = 0.0):
    assert sorted(samples) == [f"{i:08d}" for i in range(COUNT)]
    for image_id, sample in samples.items():
        expected = generate_pair(int(image_id), CONFIG).ground_truth
        np.testing.assert_allclose(sample.truth.xyxy, expected.xyxy, atol=atol)
        assert sample.truth.class_names == expected.class_names
        assert sample.template_path is not None and sample.template_path.is_file()
        assert sample.image_path.is_file() and sample.image_path != sample.template_path


# --- every layout loads to the same boxes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "path", "fmt", "splits", "atol"),
    [
        ("deeppcb", "", "deeppcb", ["trainval", "test"], 0.0),
        ("voc", "", "voc", ["train", "test"], 0.0),
        ("yolo", "", "yolo", ["train", "val"], 0.01),
        ("yolo", "data.yaml", "yolo", ["train", "val"], 0.01),
        ("coco", "", "coco", ["train", "val"], 0.01),
    ],
)
def test_every_layout_loads_the_generator_boxes_and_templates(layouts, layout, path, fmt, splits, atol):
    source = open_data(layouts / layout / path)
    assert source.format == fmt and source.split_names() == splits
    assert source.root == layouts / layout
    assert set(source.labels.names) <= set(DEEPPCB_CLASSES.names)
    _assert_generator_boxes(_all_samples(source), atol)


def test_a_single_coco_file_is_split_train_and_images_are_found_under_images(layouts, tmp_path):
    root = _copy(layouts, "coco", tmp_path)
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    shutil.copytree(root / "images" / "val", root / "images", dirs_exist_ok=True)
    single = write_file(root / "boards.json", json.dumps(coco))
    source = open_data(single)
    assert source.format == "coco" and source.split_names() == ["train"]
    assert [s.image_id for s in source.split("train").samples] == ["00000002", "00000005"]
    with pytest.raises(DatasetError, match=r"boards.json: a single COCO file is split 'train'; for a 'val' split"):
        source.split("val")


def test_coco_category_ids_may_be_any_numbers_and_crowd_boxes_are_skipped(tmp_path):
    blank_image(tmp_path / "images" / "a.jpg")
    coco = {
        "categories": [{"id": 70, "name": "spur"}, {"id": 3, "name": "short"}],
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 70, "bbox": [1, 2, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 4, 4], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1},
        ],
    }
    source = open_data(write_file(tmp_path / "a.json", json.dumps(coco)))
    assert source.labels.names == ("short", "spur")
    (sample,) = source.split("train").samples
    np.testing.assert_array_equal(sample.truth.xyxy, [[1, 2, 11, 22], [5, 5, 9, 9]])
    assert sample.truth.class_names == ["spur", "short"]


def test_yolo_splits_as_list_files_or_lists_with_mapping_names_find_the_same_boxes(layouts, tmp_path):
    root = _copy(layouts, "yolo", tmp_path)
    train_images = sorted((root / "images" / "train").iterdir())
    write_file(root / "lists" / "first.txt", f"images/train/{train_images[0].name}\n\n./images/train/{train_images[1].name}\n")
    write_file(root / "lists" / "rest.txt", "".join(f"{path}\n" for path in train_images[2:]))  # absolute paths
    config = {"path": "..", "train": ["lists/first.txt", "lists/rest.txt"], "val": "images/val", "templates": "templates",
              "names": dict(enumerate(DEEPPCB_CLASSES.names))}
    source = open_data(write_file(root / "configs" / "pcb.yaml", yaml.safe_dump(config)))
    assert source.root == root / "configs" / ".." and source.labels == DEEPPCB_CLASSES
    assert [s.image_path.name for s in source.split("train").samples] == [p.name for p in train_images]
    _assert_generator_boxes(_all_samples(source), atol=0.01)


def test_without_a_templates_entry_yolo_samples_have_none(layouts, tmp_path):
    root = _copy(layouts, "yolo", tmp_path)
    config = yaml.safe_load((root / "data.yaml").read_text())
    del config["templates"]
    write_file(root / "data.yaml", yaml.safe_dump(config))
    split = open_data(root).split("train")
    assert split.samples and not split.has_templates and {s.template_path for s in split.samples} == {None}


def test_templates_pair_by_name_in_any_format_and_are_not_samples(tmp_path):
    blank_image(tmp_path / "images" / "train" / "b1_test.png")
    blank_image(tmp_path / "images" / "train" / "b1_temp.png")
    blank_image(tmp_path / "images" / "train" / "b2.png")
    write_file(tmp_path / "data.yaml", "train: images/train\nnames: [short]\n")
    b1, b2 = open_data(tmp_path).split("train").samples
    assert (b1.image_id, b1.template_path) == ("b1", tmp_path / "images" / "train" / "b1_temp.png")
    assert (b2.image_id, b2.template_path) == ("b2", None)


def test_voc_without_train_list_trains_on_trainval_less_val(layouts, tmp_path):
    root = _copy(layouts, "voc", tmp_path)
    write_file(root / "ImageSets" / "Main" / "val.txt", "00000001\n")
    source = open_data(root)
    assert source.split_names() == ["train", "val", "test"]
    train, val = source.training_splits()
    assert [s.image_id for s in train.samples] == ["00000000", "00000003", "00000004"]
    assert [s.image_id for s in val.samples] == ["00000001"]
    write_file(root / "ImageSets" / "Main" / "train.txt", "00000004\n00000000\n")
    assert [s.image_id for s in open_data(root).split("train").samples] == ["00000004", "00000000"]


def test_voc_without_split_lists_is_all_train(layouts, tmp_path):
    root = _copy(layouts, "voc", tmp_path)
    shutil.rmtree(root / "ImageSets")
    source = open_data(root)
    assert source.split_names() == ["train"] and len(source.split("train").samples) == COUNT


# --- bad data: one problem line each, the rest loads -------------------------------------------------------------


def _yolo_broken(layouts, tmp_path, break_it):
    root = _copy(layouts, "yolo", tmp_path)
    expected = break_it(root)
    split = open_data(root).split("train")
    return split, expected


def _label(root, image_id):
    return root / "labels" / "train" / f"{image_id}.txt"


@pytest.mark.parametrize(
    ("break_it", "left_out", "message"),
    [
        (lambda r: _label(r, "00000000").write_text("9 0.5 0.5 0.1 0.1\n"), "00000000", "line 1: unknown class id 9 (expected 0..5)"),
        (lambda r: _label(r, "00000001").write_text("0 0.5 0.5 0.2 0.0\n"), "00000001", "line 1: box 64,80,96,80 has no area"),
        (lambda r: _label(r, "00000003").write_text("0 0.9 0.5 0.4 0.2\n"), "00000003", "is outside the 160x160 image"),
        (lambda r: (r / "images" / "train" / "00000004.jpg").write_bytes(b"GIF89a?"), "00000004", "not a readable image"),
    ],
)
def test_a_bad_sample_is_one_problem_and_the_rest_loads(layouts, tmp_path, break_it, left_out, message):
    split, _ = _yolo_broken(layouts, tmp_path, break_it)
    assert len(split.problems) == 1 and message in split.problems[0].message, split.problems
    assert left_out not in {s.image_id for s in split.samples} and len(split.samples) == 3


def test_a_label_file_without_an_image_is_a_problem(layouts, tmp_path):
    split, _ = _yolo_broken(layouts, tmp_path, lambda r: (r / "images" / "train" / "00000000.jpg").unlink())
    assert [str(p) for p in split.problems] == [
        f"{tmp_path / 'yolo' / 'labels' / 'train' / '00000000.txt'}: label file without an image "
        f"(no 00000000.* under {tmp_path / 'yolo' / 'images' / 'train'})"
    ]
    assert len(split.samples) == 3


def test_duplicate_image_names_in_a_split_keep_the_first(layouts, tmp_path):
    def duplicate(root):
        (root / "images" / "train" / "zz").mkdir()
        shutil.copy(root / "images" / "train" / "00000000.jpg", root / "images" / "train" / "zz" / "00000000.jpg")

    split, _ = _yolo_broken(layouts, tmp_path, duplicate)
    images = tmp_path / "yolo" / "images" / "train"
    assert [str(p) for p in split.problems] == [
        f"{images / 'zz' / '00000000.jpg'}: duplicate image id '00000000' in split train (also {images / '00000000.jpg'}); left out"
    ]
    assert [s.image_path for s in split.samples if s.image_id == "00000000"] == [images / "00000000.jpg"]


def test_a_yolo_list_naming_a_missing_image_is_a_problem(tmp_path):
    blank_image(tmp_path / "images" / "a.jpg")
    write_file(tmp_path / "train.txt", "images/a.jpg\nimages/gone.jpg\n")
    split = open_data(write_file(tmp_path / "data.yaml", "train: train.txt\nnames: [x]\n")).split("train")
    assert [s.image_id for s in split.samples] == ["a"]
    assert [str(p) for p in split.problems] == [f"{tmp_path / 'images' / 'gone.jpg'}: file not found"]


def test_a_voc_annotation_without_an_image_is_a_problem(layouts, tmp_path):
    root = _copy(layouts, "voc", tmp_path)
    (root / "JPEGImages" / "00000002.jpg").unlink()
    split = open_data(root).split("test")
    assert [s.image_id for s in split.samples] == ["00000005"]
    assert len(split.problems) == 1 and split.problems[0].path == str(root / "Annotations" / "00000002.xml")
    assert split.problems[0].message.startswith("annotation without an image: no '00000002.jpg' or 00000002.*")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["annotations"][0].update(category_id=99), "annotation 1 (image '00000000_test.jpg'): unknown category_id 99"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2]), "annotation 1: bbox"),
        (lambda c: c["annotations"][0].update(bbox=[150, 10, 30, 30]), "annotation 1: box 150,10,180,40 is outside the 160x160 image"),
        (lambda c: c["images"][0].update(file_name="missing.jpg"), "image 'missing.jpg' (id 0) not found in"),
    ],
)
def test_a_bad_coco_entry_leaves_out_its_image(layouts, tmp_path, change, message):
    root = _copy(layouts, "coco", tmp_path)
    path = root / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))
    split = open_data(root).split("train")
    assert [(p.path, p.message.startswith(message)) for p in split.problems] == [(str(path), True)], split.problems
    assert [s.image_id for s in split.samples] == ["00000001", "00000003", "00000004"]


def test_a_coco_annotation_of_an_unknown_image_is_a_problem(layouts, tmp_path):
    root = _copy(layouts, "coco", tmp_path)
    path = root / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["image_id"] = 404
    path.write_text(json.dumps(coco))
    split = open_data(root).split("val")
    assert [p.message for p in split.problems] == [f"annotation {coco['annotations'][0]['id']}: unknown image_id 404"]
    assert len(split.samples) == 2


def test_a_deeppcb_sample_without_its_template_is_a_problem(layouts, tmp_path):
    root = _copy(layouts, "deeppcb", tmp_path)
    template = next(root.rglob("00000002_temp.jpg"))
    template.unlink()
    split = open_data(root).split("test")
    assert [str(p) for p in split.problems] == [f"{template.with_name('00000002_test.jpg')}: template {template} not found"]
    assert [s.image_id for s in split.samples] == ["00000005"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nothing", r"nothing: no such file or folder"),
        (lambda p: write_file(p / "notes.txt", "x"), r"notes.txt: not a data set file"),
        (lambda p: (p / "images").mkdir() or p, r"not a data set aivd reads .*; a YOLO folder needs a data.yaml"),
        (lambda p: write_file(p / "bad.json", "{"), r"bad.json: not valid JSON"),
        (lambda p: write_file(p / "bad.json", '{"images": []}'), r"bad.json: categories: Field required"),
        (lambda p: write_file(p / "PCBData" / "test.txt", "") and p, r"not a data set aivd reads"),
    ],
)
def test_what_is_no_data_set_is_one_error_line(tmp_path, make, message):
    with pytest.raises(DatasetError, match=message) as error:
        open_data(make(tmp_path))
    assert "\n" not in str(error.value)


# --- training splits ---------------------------------------------------------------------------------------------


def _split_of(ids: list[str]) -> DataSplit:
    return DataSplit("train", DEEPPCB_CLASSES, [Sample(i, None, None, None) for i in ids])


def test_the_seeded_hold_out_is_a_stable_tenth_in_list_order():
    ids = [f"board{i:03d}" for i in range(300)]
    train, val = hold_out(_split_of(ids), seed=0)
    held = [s.image_id for s in val.samples]
    assert held == [i for i in ids if int(hashlib.sha1(f"0:{i}".encode()).hexdigest(), 16) % 10 == 0]
    assert 15 <= len(held) <= 45 and [s.image_id for s in train.samples] == [i for i in ids if i not in held]
    _, with_more = hold_out(_split_of(ids + [f"new{i}" for i in range(100)]), seed=0)
    assert [s.image_id for s in with_more.samples if s.image_id in ids] == held  # adding images moves none
    assert [s.image_id for s in hold_out(_split_of(ids), seed=1)[1].samples] != held
    assert (train.name, val.name) == ("train", "val")


@pytest.mark.parametrize("count", [2, 3, 5])
def test_a_small_train_split_still_holds_one_image_out_and_keeps_one(count):
    for seed in range(20):
        train, val = hold_out(_split_of([f"b{i}" for i in range(count)]), seed)
        assert len(val.samples) >= 1 and len(train.samples) >= 1


def test_training_splits_use_val_when_there_is_one(layouts):
    train, val = open_data(layouts / "yolo").training_splits(seed=3)
    assert len(train.samples) == 4 and [s.image_id for s in val.samples] == ["00000002", "00000005"]


def test_training_splits_hold_out_a_seeded_tenth_without_val(layouts):
    source = open_data(layouts / "voc")
    train, val = source.training_splits(seed=0)
    expected_train, expected_val = hold_out(source.split("train"), seed=0)
    assert [s.image_id for s in val.samples] == [s.image_id for s in expected_val.samples] and len(val.samples) >= 1
    assert len(train.samples) + len(val.samples) == 4


def test_deeppcb_training_splits_keep_every_tenth_rule(layouts):
    source = open_data(layouts / "deeppcb")
    train, val = source.training_splits(seed=7)
    expected_train, expected_val = holdout_split(source.split("trainval").samples)
    assert [s.image_id for s in train.samples] == [s.image_id for s in expected_train]
    assert [s.image_id for s in val.samples] == [s.image_id for s in expected_val]


# --- aivd data check ---------------------------------------------------------------------------------------------


def test_data_check_summarises_a_clean_set(layouts):
    result = runner.invoke(app, ["data", "check", str(layouts / "coco"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"format", "root", "classes", "splits", "problems"}
    assert report["format"] == "coco" and report["problems"] == [] and list(report["splits"]) == ["train", "val"]
    train = report["splits"]["train"]
    assert set(train) == {"images", "boxes", "boxes_per_class", "box_width_px", "box_height_px", "images_without_boxes", "templates"}
    truths = [generate_pair(i, CONFIG).ground_truth for i in (0, 1, 3, 4)]
    assert train["images"] == 4 and train["templates"] == 4 and train["boxes"] == sum(len(t) for t in truths)
    assert sum(train["boxes_per_class"].values()) == train["boxes"] and set(train["box_width_px"]) == {"min", "median", "max"}
    widths = np.concatenate([t.xyxy[:, 2] - t.xyxy[:, 0] for t in truths])
    assert train["box_width_px"]["max"] == pytest.approx(widths.max(), abs=0.1)
    human = runner.invoke(app, ["data", "check", str(layouts / "coco")])
    assert human.exit_code == 0 and "split train: 4 images" in human.stdout and "0 problems" in human.stdout


def test_synth_writes_a_coco_set_that_checks_clean(tmp_path):
    written = runner.invoke(app, ["synth", "--out", str(tmp_path), "--count", "3", "--size", "128", "--layout", "coco"])
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in (tmp_path / "annotations").iterdir()) == ["instances_train.json", "instances_val.json"]
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert {name: split["templates"] for name, split in json.loads(result.stdout)["splits"].items()} == {"train": 2, "val": 1}


def test_data_check_lists_every_problem_and_exits_1(layouts, tmp_path):
    root = _copy(layouts, "voc", tmp_path)
    truncated = root / "JPEGImages" / "00000000.jpg"
    truncated.write_bytes(truncated.read_bytes()[:-300])  # the header reads; only a full decode finds it
    (root / "Templates" / "00000001.jpg").write_bytes(b"")
    (root / "JPEGImages" / "00000002.jpg").unlink()
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: {truncated}: truncated image file (no end-of-image marker)",
        f"error: {root / 'JPEGImages' / '00000001.jpg'}: template {root / 'Templates' / '00000001.jpg'}: empty file (0 bytes)",
        f"error: {root / 'Annotations' / '00000002.xml'}: annotation without an image: no '00000002.jpg' or 00000002.* "
        f"in {root / 'JPEGImages'}",
    ]
    report = json.loads(runner.invoke(app, ["data", "check", str(root), "--json"]).stdout)
    assert len(report["problems"]) == 3 and set(report["problems"][0]) == {"path", "message"}
    assert report["splits"]["train"]["images"] == 2 and report["splits"]["test"]["images"] == 1


def test_data_check_exits_2_when_the_data_cannot_be_read(tmp_path):
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nowhere"), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert f"error: {tmp_path / 'nowhere'}: no such file or folder" in result.stderr
    write_file(tmp_path / "data.yaml", "train: images/train\nnames: [x]\n")
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert f"split train cannot be read: {tmp_path / 'data.yaml'}: train: {tmp_path / 'images' / 'train'} not found" in result.stderr


def test_data_check_keeps_square_brackets_in_paths(tmp_path):
    root = tmp_path / "runs[1]"
    blank_image(root / "images" / "a.jpg")
    write_file(root / "labels" / "a.txt", "5 0.5 0.5 0.1 0.1\n")
    write_file(root / "data.yaml", "train: images\nnames: [x]\n")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert f"error: {root / 'labels' / 'a.txt'}: line 1: unknown class id 5 (expected 0..0)" in result.stderr


# --- the real data sets ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_data_check_on_neu_det(neu_det_root):
    result = runner.invoke(app, ["data", "check", str(neu_det_root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "voc" and report["problems"] == [] and len(report["classes"]) == 6
    assert {name: split["images"] for name, split in report["splits"].items()} == {"train": 1620, "test": 180}
    assert sum(split["boxes"] for split in report["splits"].values()) == 4189  # as its README counts


@pytest.mark.integration
def test_data_check_on_deeppcb(deeppcb_root):
    result = runner.invoke(app, ["data", "check", str(deeppcb_root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "deeppcb" and report["problems"] == [] and report["classes"] == list(DEEPPCB_CLASSES.names)
    assert {name: split["images"] for name, split in report["splits"].items()} == {"trainval": 1000, "test": 500}
    assert all(split["templates"] == split["images"] for split in report["splits"].values())
