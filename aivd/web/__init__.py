"""Self-contained HTML pages about inspection results, readable offline from a single file."""

from aivd.web.inspection_report import annotated_image_loader, write_inspection_report

__all__ = ["annotated_image_loader", "write_inspection_report"]
