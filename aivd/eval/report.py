"""A self-contained HTML diagnostic report for any data set: metrics, per-class table, confusion matrix and the
worst images drawn, ground truth beside detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from aivd.data.images import ImageError, read_gray
from aivd.eval.protocol import PROTOCOL_DESCRIPTION, ImageMatch
from aivd.viz.annotate import GROUND_TRUTH_COLOUR, draw_detections
from aivd.web.assets import jpeg_data_uri

_environment = Environment(loader=PackageLoader("aivd.eval", "templates"), autoescape=select_autoescape(["html"]))


def _sample_view(match: ImageMatch, image_path: Path | None) -> dict:
    """Ground truth in green on the left, detections in class colours on the right; errors listed."""
    problems = []
    for index in np.flatnonzero(~match.det_correct):
        det = match.detections[int(index)]
        gt_index = match.det_gt[index]
        if gt_index >= 0:
            problems.append(f"{match.ground_truth.class_names[gt_index]} detected as {det.class_names[0]} ({det.confidence[0]:.2f})")
        else:
            problems.append(f"false positive {det.class_names[0]} ({det.confidence[0]:.2f}) at {[int(v) for v in det.xyxy[0]]}")
    paired_gt = set(match.det_gt[match.det_gt >= 0].tolist())
    for gt_index in range(len(match.ground_truth)):
        if gt_index not in paired_gt:
            problems.append(f"missed {match.ground_truth.class_names[gt_index]} at {[int(v) for v in match.ground_truth.xyxy[gt_index]]}")
    view = {"image_id": match.image_id, "problems": problems or ["no errors"], "correct": match.correct, "ground_truth": len(match.ground_truth), "detections": len(match.detections), "picture": ""}
    if image_path is not None:
        try:
            image = read_gray(image_path)
        except ImageError:
            return view
        truth = draw_detections(image, match.ground_truth, colour=GROUND_TRUTH_COLOUR, show_score=False)
        predicted = draw_detections(image, match.detections)
        gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
        view["picture"] = jpeg_data_uri(np.hstack([truth, gap, predicted]), max_side=1280)
    return view


def write_report(
    path: Path,
    title: str,
    summary: dict,
    classes: dict,
    confusion: dict,
    matches: list[ImageMatch],
    image_paths: dict[str, Path],
    worst: int = 24,
    extra: dict | None = None,
    include_correct: bool = False,
    groups: dict | None = None,
    protocol: str = PROTOCOL_DESCRIPTION,
) -> Path:
    """Write the report; the `worst` images (most errors first) are drawn with ground truth and detections.

    `summary` holds the headline figures (any of map50, map50_95, fscore, ap, precision, recall; None shows as n/a)
    and the counts images, ground_truth, detections, correct, optionally errors; `classes` one row per class with
    any of ap50, precision, recall, f1, ground_truth, detections, correct; `protocol` says in words how they were
    computed. For any data set: `write_report(path, title, ev.summary(), ev.per_class, ev.confusion, ev.matches,
    image_paths, protocol=ev.protocol)` with `ev` from `aivd.eval.detection_metrics.evaluate_detections`.
    Error-free images are left out unless `include_correct` (small sets such as the demo's show everything).
    """
    ranked = sorted(matches, key=lambda m: (-(m.false_positives + m.missed), m.image_id))
    shown = [m for m in ranked if include_correct or m.false_positives + m.missed > 0][:worst]
    samples = [_sample_view(m, image_paths.get(m.image_id)) for m in shown]
    html = _environment.get_template("eval_report.html").render(
        title=title, summary=summary, classes=classes, confusion=confusion, samples=samples, extra=extra or {}, groups=groups or {},
        protocol=protocol,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
