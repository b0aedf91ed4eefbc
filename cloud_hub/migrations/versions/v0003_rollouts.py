"""Rollouts: a model version going out to a fleet in waves, and each device's assignment.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("soak_seconds", sa.Integer(), nullable=False),
        sa.Column("probation_seconds", sa.Integer(), nullable=False),
        sa.Column("failure_tolerance", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.Column("finished_at", _UTC, nullable=True),
        sa.CheckConstraint(
            "state IN ('running', 'paused', 'halted', 'aborted', 'completed')",
            name=op.f("ck_rollouts_state"),
        ),
        sa.ForeignKeyConstraint(
            ["fleet_id"], ["fleets.id"], name=op.f("fk_rollouts_fleet_id_fleets")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_rollouts_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_fleet_id"), "rollouts", ["fleet_id"])
    op.create_index(op.f("ix_rollouts_state"), "rollouts", ["state"])
    op.create_table(
        "rollout_waves",
        sa.Column("rollout_id", sa.String(length=16), nullable=False),
        sa.Column("wave_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("device_ids", sa.JSON(), nullable=False),
        sa.Column("started_at", _UTC, nullable=True),
        sa.Column("passed_at", _UTC, nullable=True),
        sa.Column("rolled_back_at", _UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_waves_rollout_id_rollouts")
        ),
        sa.PrimaryKeyConstraint("rollout_id", "wave_index", name=op.f("pk_rollout_waves")),
    )
    op.create_table(
        "device_assignments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("rollout_id", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("wave_index", sa.Integer(), nullable=False),
        sa.Column("desired", sa.String(length=16), nullable=False),
        sa.Column("target_version", sa.String(length=64), nullable=False),
        sa.Column("previous_model", sa.String(length=128), nullable=True),
        sa.Column("previous_version", sa.String(length=64), nullable=True),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reported_version", sa.String(length=64), nullable=True),
        sa.Column("installed_at", _UTC, nullable=True),
        sa.Column("notify", sa.Boolean(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "desired IN ('none', 'target', 'previous')",
            name=op.f("ck_device_assignments_desired"),
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_assignments_device_id_devices")
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_device_assignments_rollout_id_rollouts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_assignments")),
        sa.UniqueConstraint(
            "rollout_id", "device_id", name=op.f("uq_device_assignments_rollout_id_device_id")
        ),
    )
    op.create_index(
        op.f("ix_device_assignments_device_id_created_at"),
        "device_assignments",
        ["device_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("device_assignments")
    op.drop_table("rollout_waves")
    op.drop_index(op.f("ix_rollouts_state"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_fleet_id"), table_name="rollouts")
    op.drop_table("rollouts")
