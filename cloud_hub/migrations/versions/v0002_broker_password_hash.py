"""Device credentials keep a Mosquitto password hash, so the database can rebuild the broker's
password file (see cloud_hub/broker/README.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 20:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "device_credentials",
        sa.Column("broker_hash", sa.String(length=255), nullable=True),
    )


def downgrade() -> None:
    # SQLite cannot drop a column in place; batch mode rebuilds the table there.
    with op.batch_alter_table("device_credentials") as batch:
        batch.drop_column("broker_hash")
