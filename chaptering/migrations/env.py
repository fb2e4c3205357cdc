"""Alembic's entry point for the feedback store: runs on the connection `chaptering.migrations` hands it."""

from __future__ import annotations

from typing import Any

from alembic import context

from chaptering.feedback_tables import Base, UTCDateTime
from chaptering.migrations import VERSION_TABLE

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the `alembic` script, which we do not ship
    raise RuntimeError("run the feedback-store migrations through chaptering.migrations (it opens the connection)")


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Only our tables: the database may be shared (say, with MLflow's own tables)."""
    return type_ != "table" or name in Base.metadata.tables


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """New migrations spell our UTC type as the plain column type it stores, so they import nothing
    from the models (a migration must keep working after the models move on)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
    render_item=render_item,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
