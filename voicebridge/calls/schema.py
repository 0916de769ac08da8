"""The database tables of call records (SQLAlchemy Core), the same on SQLite and
PostgreSQL.

``calls``: one row per call, with its summary (times, end, counts, latency, tokens,
cost, a preview). ``call_turns``: the turns of each call, ``seq`` giving their order.
Times are stored in UTC. Changing a table here needs a migration in
:mod:`voicebridge.calls.migrations` (a test compares the migrated database with this).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata: Final = MetaData()

#: The token columns of ``calls``, named as :class:`voicebridge.calls.record.Usage` fields.
USAGE_COLUMNS: Final = (
    "responses",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_text",
    "input_audio",
    "input_image",
    "cached",
    "cached_text",
    "cached_audio",
    "output_text",
    "output_audio",
    "reasoning",
)

calls: Final = Table(
    "calls",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("channel", String, nullable=False),
    Column("instance", String, nullable=False),
    Column("client", String, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("end_reason", String, nullable=False),
    Column("close_code", Integer),
    Column("turns", Integer, nullable=False),
    Column("barge_ins", Integer, nullable=False),
    Column("reconnects", Integer, nullable=False),
    Column("tool_calls", Integer, nullable=False),
    Column("latency_count", Integer, nullable=False),
    Column("latency_p50_ms", Float),
    Column("latency_p95_ms", Float),
    Column("latency_max_ms", Float),
    *(Column(f"tokens_{name}", BigInteger, nullable=False) for name in USAGE_COLUMNS),
    Column("cost_usd", Float),
    Column("metadata", JSON, nullable=False),
    Column("dropped_turns", Integer, nullable=False),
    Column("redaction", String, nullable=False),
    Column("preview", Text, nullable=False),
    Column("record_version", Integer, nullable=False),
    Column("written_at", DateTime(timezone=True), nullable=False),
    Index("ix_calls_started_at", "started_at"),
    Index("ix_calls_end_reason", "end_reason"),
    Index("ix_calls_channel", "channel"),
)

call_turns: Final = Table(
    "call_turns",
    metadata,
    Column("call_id", String, ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String, nullable=False),
    Column("text", Text, nullable=False),
    Column("unheard", Text, nullable=False),
    Column("response_id", String),
    Column("interrupted", Boolean, nullable=False),
    Column("heard_share", Float),
    Column("latency_ms", Float),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("name", String),
    Column("outcome", String),
    Column("duration_ms", Float),
)

#: One row per applied migration.
schema_versions: Final = Table(
    "call_schema_versions",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
