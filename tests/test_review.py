"""Human reviews: stored beside the machine's answer (never over it), checked, queued by what they would teach, read
back by learners, and exported as data sets the training commands read. On SQLite and, with
AIVD_TEST_POSTGRES_URL, on PostgreSQL (the store_url fixture)."""

import json

import pytest
from sqlalchemy import select

from aivd.data.sources import open_data
from aivd.review import ReviewError, ReviewLabel, ReviewStore, export_dataset
from aivd.schema.records import DefectRecord, InspectionRecord
from aivd.store import ResultStore
from aivd.store.database import defects, images
from aivd.store.priority import DRIFT_WEIGHT, MOST
from tests.conftest import blank_image
from tests.test_store import read

CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]


def defect(bbox, name, confidence, source="edge", edge_type=None):
    return DefectRecord(bbox=bbox, defect_type=name, confidence=confidence, source=source, edge_type=edge_type)


def record(tmp_path, index: int, found=(), rejected=(), status="ok") -> InspectionRecord:
    image = blank_image(tmp_path / "boards" / f"{index:03d}_test.jpg", 64, 48)
    template = blank_image(tmp_path / "boards" / f"{index:03d}_temp.jpg", 64, 48)
    return InspectionRecord(image=str(image), image_id=f"{index:03d}", template=str(template), status=status,
                            error=None if status == "ok" else "unreadable", detector="centernet", analyzer="builtin",
                            defects=list(found), rejected=list(rejected))


@pytest.fixture
def inspected(store_url, tmp_path):
    """A run of five images: 1 sure (0.95), 2 unsure (0.4), 3 with the tiers disagreeing on the class, 4 with a box
    the cloud rejected, 5 failed; returns (url, row ids in that order)."""
    records = [
        record(tmp_path, 1, [defect((5, 5, 20, 20), "open", 0.95)]),
        record(tmp_path, 2, [defect((5, 5, 20, 20), "short", 0.4)]),
        record(tmp_path, 3, [defect((30, 10, 40, 30), "spur", 0.9, "cloud:builtin", edge_type="short")]),
        record(tmp_path, 4, [], [defect((2, 2, 9, 9), "copper", 0.9, "cloud:builtin", edge_type="copper")]),
        record(tmp_path, 5, status="error"),
    ]
    with ResultStore(store_url) as store:
        run_id = store.start_run("aivd inspect", {"classes": CLASSES})
        for item in records:
            store.add(run_id, item)
    return store_url, [1, 2, 3, 4, 5]


def test_reviews_are_stored_beside_the_machine_answer_newest_first(inspected):
    url, (sure, unsure, *_) = inspected
    machine = read(url, select(defects)).all()
    with ReviewStore(url) as store:
        first = store.add(unsure, "ana", "accepted")  # no labels: the machine's defects as they are
        second = store.add(unsure, "ben", "corrected", [{"bbox": [6, 6, 22, 21], "defect_type": "spur", "defect_id": 2},
                                                         {"bbox": [40, 30, 50, 40], "defect_type": "open", "defect_id": None}],
                           note="spur, and a missed open")
        store.add(sure, "ana", "good")
        assert store.current(unsure).id == second and store.current(unsure).reviewer == "ben"
        assert [r.id for r in store.history(unsure)] == [first, second]
        accepted = store.history(unsure)[0]
        assert accepted.verdict == "accepted" and accepted.labels == (ReviewLabel((5.0, 5.0, 20.0, 20.0), "short", 2),)
        assert store.current(unsure).labels[1] == ReviewLabel((40.0, 30.0, 50.0, 40.0), "open", None)
        assert store.current(sure).labels == () and store.current(3) is None
        assert [r.id for r in store.reviewed_since(first)] == [second, second + 1]
        assert store.reviewed_since(second + 1) == []
        assert store.current(unsure).image.endswith("002_test.jpg") and store.current(unsure).template.endswith("002_temp.jpg")
    assert read(url, select(defects)).all() == machine  # the machine's rows are untouched


@pytest.mark.parametrize("verdict, labels, message", [
    ("fine", [], "verdict 'fine' is not one of accepted, corrected, good"),
    ("good", [{"bbox": [1, 1, 5, 5], "defect_type": "open"}], "verdict good means no defect, but 1 labels were given"),
    ("corrected", [{"bbox": [10, 1, 5, 5], "defect_type": "open"}], "label 1: bbox [10.0, 1.0, 5.0, 5.0] needs x1 < x2 and y1 < y2"),
    ("corrected", [{"bbox": [1, 1, 70, 5], "defect_type": "open"}], "label 1: bbox [1.0, 1.0, 70.0, 5.0] lies outside the 64x48 image"),
    ("corrected", [{"bbox": [1, 1, 5], "defect_type": "open"}], "label 1: bbox must be 4 finite numbers"),
    ("corrected", [{"bbox": [1, 1, 5, 5], "defect_type": "scratch"}], "label 1: class 'scratch' is not one of the run's classes"),
    ("corrected", [{"bbox": [1, 1, 5, 5], "defect_type": "open", "defect_id": 3}], "label 1: defect 3 is not one of this image's defects"),
    ("corrected", [{"box": [1, 1, 5, 5], "defect_type": "open"}], "label 1: expected keys bbox, defect_type"),
])
def test_bad_reviews_are_refused_with_one_line(inspected, verdict, labels, message):
    url, (_, unsure, *_) = inspected
    with ReviewStore(url) as store, pytest.raises(ReviewError) as error:
        store.add(unsure, "ana", verdict, labels)
    assert message in str(error.value) and "\n" not in str(error.value)
    with ReviewStore(url) as store:
        assert store.history(unsure) == []


def test_a_review_of_an_unknown_image_or_by_nobody_is_refused(inspected):
    url, _ = inspected
    with ReviewStore(url) as store:
        with pytest.raises(ReviewError, match="has no such image"):
            store.add(99, "ana", "good")
        with pytest.raises(ReviewError, match="no reviewer named"):
            store.add(1, " ", "good")


def test_the_queue_ranks_what_a_label_would_teach_and_leaves_out_reviewed_and_failed_images(inspected):
    url, (sure, unsure, disagree, rejected, failed) = inspected
    with ReviewStore(url) as store:
        queue = store.queue(10, audit_share=0.0)
        assert [item.image_row_id for item in queue] == [disagree, rejected, unsure, sure]
        assert queue[0].reasons == ("uncertainty 0.10", "edge and cloud classes differ") and queue[0].priority == pytest.approx(1.1)
        assert queue[1].reasons == ("uncertainty 0.10", "cloud rejected an edge box")
        assert queue[2].priority == pytest.approx(0.6) and queue[3].priority == pytest.approx(0.05)
        store.add(disagree, "ana", "accepted")
        assert [item.image_row_id for item in store.queue(2, run_id=1, audit_share=0.0)] == [rejected, unsure]
        assert store.queue(10, run_id=2) == []
        # Everything in the audit share: all rank MOST higher, in the same order; the draw is the same call after call.
        audited = store.queue(10, audit_share=1.0)
        assert [item.image_row_id for item in audited] == [rejected, unsure, sure]
        assert all("random audit" in item.reasons and item.priority >= MOST for item in audited)
        assert audited[0].priority == pytest.approx(MOST + 1.1)
        with pytest.raises(ReviewError, match="audit share must be in"):
            store.queue(10, audit_share=1.5)


def test_the_audit_share_is_seeded_and_near_its_size(store_url, tmp_path):
    with ResultStore(store_url) as results:
        run_id = results.start_run("aivd inspect", {"classes": CLASSES})
        image = record(tmp_path, 1, [defect((5, 5, 20, 20), "open", 1.0)])  # sure: only an audit ranks it above 0
        for _ in range(400):
            results.add(run_id, image)
    with ReviewStore(store_url) as store:
        def audited(seed):
            return {item.image_row_id for item in store.queue(400, audit_share=0.1, seed=seed) if item.priority >= MOST}
        assert audited(0) == audited(0) and audited(0) != audited(1)
        assert 25 <= len(audited(0)) <= 55 and 25 <= len(audited(1)) <= 55
        # A short page holds the audited images first, the same whatever the page's size.
        assert {item.image_row_id for item in store.queue(10, audit_share=0.1, seed=0)} < audited(0)


def test_images_inspected_in_the_drift_window_rank_higher_and_without_a_learner_nothing_changes(store_url, tmp_path):
    unsure = record(tmp_path, 1, [defect((5, 5, 20, 20), "short", 0.4)])
    sure = record(tmp_path, 2, [defect((5, 5, 20, 20), "open", 0.95)])
    with ResultStore(store_url) as results:
        run_id = results.start_run("aivd inspect", {"classes": CLASSES})
        plain = [results.add(run_id, unsure), results.add(run_id, sure)]
        calm = results.add(run_id, unsure, drifted=False)
        drifting = results.add(run_id, sure, drifted=True)
    with ReviewStore(store_url) as store:
        queue = store.queue(10, audit_share=0.0)
    assert [item.image_row_id for item in queue] == [drifting, plain[0], calm, plain[1]]
    assert queue[0].priority == pytest.approx(DRIFT_WEIGHT + 0.05) and queue[0].reasons == ("uncertainty 0.05", "in the drift window")
    assert queue[1].priority == queue[2].priority == pytest.approx(0.6) and queue[1].reasons == queue[2].reasons == ("uncertainty 0.60",)
    assert read(store_url, select(images.c.drifted).order_by(images.c.id)).scalars().all() == [None, None, False, True]


def test_runs_without_stored_classes_allow_the_classes_their_defects_were_given(store_url, tmp_path):
    with ResultStore(store_url) as results:
        run_id = results.start_run("aivd inspect", {})
        results.add(run_id, record(tmp_path, 1, [defect((5, 5, 20, 20), "spur", 0.9, "cloud:builtin", edge_type="short")]))
    with ReviewStore(store_url) as store:
        assert store.known_classes(run_id) == ["short", "spur"]
        with pytest.raises(ReviewError, match=r"class 'open' is not one of the run's classes \(short, spur\)"):
            store.add(1, "ana", "corrected", [{"bbox": [1, 1, 5, 5], "defect_type": "open"}])


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco"])
def test_export_writes_the_reviewed_images_with_their_human_labels_as_training_reads_them(inspected, tmp_path, fmt):
    url, (sure, unsure, disagree, *_) = inspected
    with ReviewStore(url) as store:
        store.add(unsure, "ana", "accepted")
        store.add(unsure, "ben", "corrected", [{"bbox": [6, 6, 22, 21], "defect_type": "spur", "defect_id": 2}])
        store.add(disagree, "ana", "corrected", [{"bbox": [30, 10, 40, 30], "defect_type": "short", "defect_id": 3},
                                                  {"bbox": [2, 30, 12, 40], "defect_type": "open"}])
        store.add(sure, "ana", "good")
    out = tmp_path / f"export-{fmt}"
    summary = export_dataset(url, out, fmt)
    assert summary["images"] == 3 and summary["boxes"] == 3
    source = open_data(out)  # what `aivd train pack --data OUT` opens, and `aivd finetune build --yolo/--voc OUT`
    assert source.format == fmt
    split = source.split("train")
    assert not split.problems
    truth = {sample.image_id: sample.truth for sample in split.samples}
    assert sorted(truth) == [f"{sure}-001", f"{unsure}-002", f"{disagree}-003"]
    assert len(truth[f"{sure}-001"]) == 0  # good: a defect-free image
    assert truth[f"{unsure}-002"].class_names == ["spur"] and truth[f"{unsure}-002"].xyxy.tolist() == [[6, 6, 22, 21]]
    assert sorted(truth[f"{disagree}-003"].class_names) == ["open", "short"]
    assert all(sample.template_path is not None for sample in split.samples)
    train, val = source.training_splits(seed=0)  # what `aivd train pack` reads
    assert len(train.samples) + len(val.samples) == 3
    with pytest.raises(ReviewError, match="must be new or empty"):
        export_dataset(url, out, fmt)


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_finetune_build_reads_the_export(inspected, tmp_path, fmt):
    pytest.importorskip("transformers", reason="the `vlm` extra is not installed")
    pytest.importorskip("torch", reason="the `train` extra is not installed")
    from typer.testing import CliRunner

    from aivd.cli.main import app

    url, (sure, unsure, *_) = inspected
    with ReviewStore(url) as store:
        store.add(unsure, "ana", "corrected", [{"bbox": [6, 6, 30, 30], "defect_type": "spur", "defect_id": 2}])
        store.add(sure, "ana", "accepted")
    export_dataset(url, tmp_path / "export", fmt)
    result = CliRunner().invoke(app, ["finetune", "build", f"--{fmt}", str(tmp_path / "export"), "--out", str(tmp_path / "chats")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "chats" / "dataset.json").read_text())["images"] == 2


def test_export_refuses_an_unknown_format_and_a_database_without_reviews(inspected, tmp_path):
    url, _ = inspected
    with pytest.raises(ReviewError, match="export format 'csv' is not one of yolo, voc, coco"):
        export_dataset(url, tmp_path / "out", "csv")
    with pytest.raises(ReviewError, match="has no reviewed image to export"):
        export_dataset(url, tmp_path / "out", "yolo")


def test_the_queue_sees_images_and_reviews_stored_after_its_first_call(inspected, tmp_path):
    url, (sure, unsure, disagree, rejected, _) = inspected
    with ReviewStore(url) as store, ReviewStore(url) as console:
        assert [item.image_row_id for item in console.queue(10, audit_share=0.0)] == [disagree, rejected, unsure, sure]
        with ResultStore(url) as results:
            new = results.add(1, record(tmp_path, 6, [defect((5, 5, 20, 20), "open", 0.01)]))
        store.add(disagree, "ana", "good")  # through another store, as another process would
        assert [item.image_row_id for item in console.queue(10, audit_share=0.0)] == [rejected, new, unsure, sure]
