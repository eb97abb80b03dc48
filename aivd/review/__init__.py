"""Human review of inspected images: the review store and its queue, and the export of reviewed images as a data set."""

from aivd.review.export import EXPORT_FORMATS, export_dataset
from aivd.review.store import VERDICTS, QueueItem, Review, ReviewError, ReviewLabel, ReviewStore

__all__ = ["ReviewStore", "Review", "ReviewLabel", "QueueItem", "ReviewError", "VERDICTS", "export_dataset", "EXPORT_FORMATS"]
