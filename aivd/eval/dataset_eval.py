"""`aivd eval --data DATA --split S --pack P`: a pack (edge alone, or with its cloud tier) scored on any data set."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aivd.data.dataset import Sample
from aivd.data.images import ImageError, read_pair
from aivd.eval.detection_metrics import DatasetEval, Pair, evaluate_detections

# Edge alone: candidates down to this score are kept for mAP, which ranks them all (COCO style); precision,
# recall and F1 are taken at the detector's calibrated threshold.
MAP_FLOOR = 0.01


def predict_samples(pipeline, samples: Iterable[Sample], use_templates: bool = True, on_error: Callable[[ImageError], None] | None = None
                    ) -> tuple[list[Pair], list[float], int]:
    """Per readable sample: (image id, predictions, ground truth) and the threshold its predictions are judged
    at; and how many samples could not be read (each reported to `on_error`)."""
    edge_only = pipeline.analyzer is None
    pairs, thresholds, errors = [], [], 0
    for sample in samples:
        try:
            image, template = read_pair(sample.image_path, sample.template_path)
        except ImageError as error:
            errors += 1
            if on_error:
                on_error(error)
            continue
        template = template if use_templates and pipeline.uses_template else None
        if edge_only:
            threshold = pipeline.edge_threshold_for(template)
            predictions = pipeline.detector.detect(image, template, min(MAP_FLOOR, threshold))
        else:
            threshold, predictions = 0.0, pipeline.detect(image, template)  # the cloud's decisions are final
        pairs.append((sample.image_id, predictions, sample.ground_truth()))
        thresholds.append(threshold)
    return pairs, thresholds, errors


def evaluate_pipeline(pipeline, samples: Iterable[Sample], use_templates: bool = True, on_error=None) -> DatasetEval:
    pairs, thresholds, errors = predict_samples(pipeline, samples, use_templates, on_error)
    # One detector serves a split (all its images have templates, or none has): one threshold.
    threshold = max(thresholds) if thresholds else pipeline.edge_threshold
    return evaluate_detections(pairs, pipeline.labels, threshold, errors)
