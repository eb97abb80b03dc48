"""Covering indexes for the console's defect filters and the review queue over a million defects; they replace the
two single-column indexes of 0001 that are their first column.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_index("defects_image_filter", "defects",
                    ["image_row_id", "rejected", "defect_type", "severity", "confidence", "edge_type", "source"])
    op.create_index("defects_class_filter", "defects", ["defect_type", "severity", "confidence", "rejected", "image_row_id"])
    op.drop_index("ix_defects_image_row_id", "defects")
    op.drop_index("ix_defects_defect_type", "defects")


def downgrade() -> None:
    op.create_index("ix_defects_defect_type", "defects", ["defect_type"])
    op.create_index("ix_defects_image_row_id", "defects", ["image_row_id"])
    op.drop_index("defects_class_filter", "defects")
    op.drop_index("defects_image_filter", "defects")
