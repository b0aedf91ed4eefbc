"""Hard examples: offloaded inputs with the cloud's and the edge's answers, per fleet.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 15:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)
_INDEXES = {
    "ix_hard_examples_fleet_id_id": ["fleet_id", "id"],
    "ix_hard_examples_fleet_id_model_id": ["fleet_id", "model", "id"],
    "ix_hard_examples_model_id": ["model", "id"],
}


def upgrade() -> None:
    op.create_table(
        "hard_examples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("received_at", _UTC, nullable=False),
        sa.Column("inputs", sa.LargeBinary(), nullable=True),
        sa.Column("input_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cloud_label", sa.Integer(), nullable=True),
        sa.Column("cloud_score", sa.Float(), nullable=True),
        sa.Column("edge_label", sa.Integer(), nullable=True),
        sa.Column("edge_score", sa.Float(), nullable=True),
        sa.Column("edge_version", sa.String(length=64), nullable=True),
        sa.Column("agreed", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_hard_examples_device_id_devices")
        ),
        sa.ForeignKeyConstraint(
            ["fleet_id"], ["fleets.id"], name=op.f("fk_hard_examples_fleet_id_fleets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hard_examples")),
    )
    for name, columns in _INDEXES.items():
        op.create_index(op.f(name), "hard_examples", columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(op.f(name), table_name="hard_examples")
    op.drop_table("hard_examples")
