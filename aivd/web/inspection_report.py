"""The report a quality engineer reads after `aivd inspect`: totals, defects per class and severity, latency,
cloud traffic, the worst boards with their defects, and the images that could not be inspected.

One HTML file with the thumbnails embedded and a class/severity filter in inline JavaScript, so it can be
mailed or archived with a run and opened without a network.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from aivd.schema.records import DefectRecord, InspectionRecord
from aivd.web.assets import jpeg_data_uri

ImageLoader = Callable[[InspectionRecord], np.ndarray | None]

# Worst first; "unrated" is a defect without a severity (edge only, or the cloud tier failed for its image).
SEVERITIES = ("critical", "major", "minor", "unrated")
SEVERITY_LABELS = {"critical": "critical", "major": "major", "minor": "minor", "unrated": "not rated"}
# 480 px JPEGs at this quality are 20-50 kB each, so a report of 500 boards with defects stays under ~30 MB.
THUMBNAIL_SIDE = 480
THUMBNAIL_QUALITY = 80

_environment = Environment(loader=PackageLoader("aivd.web", "templates"), autoescape=select_autoescape(["html"]))


def annotated_image_loader(out_dir: Path) -> ImageLoader:
    """Loads the annotated image `aivd inspect` wrote for a record, OUT/annotated/<image_id>.jpg, if there is one."""
    folder = Path(out_dir) / "annotated"

    def load(record: InspectionRecord) -> np.ndarray | None:
        path = folder / f"{record.image_id}.jpg"
        return cv2.imread(str(path)) if path.is_file() else None  # checked first: imread warns on stderr for a missing file

    return load


def _severity(defect: DefectRecord) -> str:
    return defect.severity.value if defect.severity is not None else "unrated"


def _worst_severity(record: InspectionRecord) -> int:
    return min(SEVERITIES.index(_severity(d)) for d in record.defects)


def _bars(counts: Counter, order: list[str], labels: dict[str, str] | None = None) -> list[dict]:
    """Rows for a count table with a bar as wide as the count relative to the largest."""
    total, largest = sum(counts.values()), max(counts.values(), default=0)
    return [
        {"key": key, "name": (labels or {}).get(key, key), "count": counts[key],
         "percent": 100 * counts[key] / total if total else 0.0, "width": 100 * counts[key] / largest if largest else 0.0}
        for key in order
    ]


def _latency(records: list[InspectionRecord]) -> list[dict]:
    """Per stage, in the order stages first appear with "total" last: mean and percentiles over the images timed."""
    samples: dict[str, list[float]] = {}
    for record in records:
        for stage, ms in record.timings_ms.items():
            samples.setdefault(stage, []).append(ms)
    rows = []
    for stage in sorted(samples, key=lambda name: name == "total"):
        values = np.asarray(samples[stage], np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        rows.append({"stage": stage, "images": len(values), "mean": values.mean(), "p50": p50, "p90": p90, "p99": p99})
    return rows


def _size(defect: DefectRecord) -> str:
    measured = defect.measurements
    if measured is not None and measured.width_mm is not None and measured.height_mm is not None:
        return f"{measured.width_mm:.2f} × {measured.height_mm:.2f} mm"
    x1, y1, x2, y2 = defect.bbox
    return f"{x2 - x1:.0f} × {y2 - y1:.0f} px"


def _defect_view(defect: DefectRecord) -> dict:
    decided_by_cloud = defect.edge_type is not None
    return {
        "type": defect.defect_type, "severity": _severity(defect), "confidence": defect.confidence, "size": _size(defect),
        "description": defect.description or "", "action": defect.recommended_action or "", "causes": defect.likely_causes,
        "edge": f"{defect.edge_type} {defect.edge_confidence:.2f}" if decided_by_cloud and defect.edge_confidence is not None else "",
    }


def _worst_first(record: InspectionRecord) -> tuple:
    return _worst_severity(record), -len(record.defects), record.image_id


def _rejected_name(defect: DefectRecord) -> str:
    """A rejected candidate by the class the edge proposed, which is what the cloud overruled."""
    return defect.edge_type or defect.defect_type


def _rejected_by_cloud(record: InspectionRecord) -> list[DefectRecord]:
    """The candidates the cloud judged not to be defects (the others in `rejected` the edge dropped itself)."""
    return [d for d in record.rejected if d.source != "edge"]


def _card(record: InspectionRecord, image_loader: ImageLoader | None) -> dict:
    image = image_loader(record) if image_loader else None
    return {
        "image_id": record.image_id, "image": record.image, "analyzer": record.analyzer, "cloud_error": record.cloud_error,
        "thumbnail": jpeg_data_uri(image, THUMBNAIL_SIDE, THUMBNAIL_QUALITY) if image is not None else "",
        "worst": SEVERITIES[_worst_severity(record)],
        "defects": [_defect_view(d) for d in record.defects],
        "rejected": [_rejected_name(d) for d in _rejected_by_cloud(record)],
    }


def _cards(records: list[InspectionRecord], image_loader: ImageLoader | None) -> list[dict]:
    """The gallery's cards, in order. Their thumbnails (a JPEG read, shrunk and encoded each: most of the report's
    cost) are made on a thread per core, since OpenCV releases the GIL."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="aivd-report") as pool:
        return list(pool.map(lambda record: _card(record, image_loader), records))


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.2f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"


def write_inspection_report(
    out_dir: Path,
    records: list[InspectionRecord],
    title: str = "AIVD inspection report",
    extra: dict | None = None,
    image_loader: ImageLoader | None = None,
    gallery_limit: int = 500,
) -> Path:
    """Write OUT/report.html and return its path.

    `image_loader` gives the annotated BGR image of a record (None when there is none), e.g.
    `annotated_image_loader(out_dir)`; without it the gallery has no pictures. The gallery shows the
    `gallery_limit` worst images with defects, which bounds the file size of very large runs.
    """
    inspected = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status != "ok"]
    found = [d for r in inspected for d in r.defects]
    rejected = [d for r in inspected for d in _rejected_by_cloud(r)]
    class_counts = Counter(d.defect_type for d in found)
    severity_counts = Counter(_severity(d) for d in found)
    with_defects = sorted((r for r in inspected if r.defects), key=_worst_first)
    sent, received = sum(r.bytes_to_cloud for r in records), sum(r.bytes_from_cloud for r in records)
    cloud_used = [r for r in inspected if r.bytes_to_cloud or r.bytes_from_cloud]
    totals = {
        "images": len(records), "ok": len(inspected), "failed": len(failed), "defects": len(found),
        "rejected": len(rejected), "with_defects": len(with_defects), "cloud_errors": sum(1 for r in inspected if r.cloud_error),
    }
    html = _environment.get_template("inspection_report.html").render(
        title=title,
        extra=extra or {},
        severity_labels=SEVERITY_LABELS,
        totals=totals,
        classes=_bars(class_counts, sorted(class_counts, key=lambda name: (-class_counts[name], name))),
        rejected_classes=Counter(_rejected_name(d) for d in rejected).most_common(),
        # the three severities always, so a run without a critical defect says so; "not rated" only when there are such
        severities=_bars(severity_counts, [s for s in SEVERITIES if s != "unrated" or severity_counts[s]], SEVERITY_LABELS),
        latency=_latency(inspected),
        cloud={"sent": _megabytes(sent), "received": _megabytes(received), "images": len(cloud_used),
               "per_image": _megabytes((sent + received) // max(len(cloud_used), 1))} if sent or received else None,
        cards=_cards(with_defects[:gallery_limit], image_loader),
        failed=failed,
        cloud_errors=[r for r in inspected if r.cloud_error],
    )
    path = Path(out_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
