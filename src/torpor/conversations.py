"""Playground conversations, stored server-side per API key.

A conversation belongs to the key that created it; other keys never see it. Messages are
kept as a JSON list on the row. Assistant messages are saved without their
``<think>...</think>`` segments: history holds the clean answer only.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from torpor.errors import QuotaExceeded
from torpor.store.db import as_utc, utcnow
from torpor.store.tables import Base

# One conversation holds at most this many messages (each append is bounded by the body
# limit; this bounds the row).
MAX_MESSAGES = 2000

_THINK_RE = re.compile(r"<think>.*?(</think>|\Z)", re.DOTALL)


class ConversationFull(QuotaExceeded):
    default_message = "Conversation is full"


def strip_think(text: str) -> str:
    """The answer without reasoning segments (an unterminated one runs to the end)."""
    return _THINK_RE.sub("", text).strip()


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    deployment: Mapped[str] = mapped_column(String(63))
    title: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


def clean_message(message: dict[str, Any]) -> dict[str, Any]:
    role = str(message.get("role", "user"))
    content = str(message.get("content", ""))
    if role == "assistant":
        content = strip_think(content)
    # An answer the user stopped keeps its marker when the conversation is reopened.
    stopped = {"stopped": True} if role == "assistant" and message.get("stopped") else {}
    return {"role": role, "content": content, **stopped}


def summary_view(row: ConversationRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "deployment": row.deployment,
        "title": row.title,
        "message_count": len(row.messages),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def full_view(row: ConversationRow) -> dict[str, Any]:
    return {
        **summary_view(row),
        "system_prompt": row.system_prompt,
        "settings": row.settings,
        "messages": row.messages,
    }


def _iso(value: datetime) -> str:
    return (as_utc(value) or value).isoformat()


class Conversations:
    """Small typed access to the conversations table, always scoped to one key."""

    def __init__(self, engine: AsyncEngine):
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    async def list_for(
        self, key_id: str, deployment: str | None = None
    ) -> Sequence[ConversationRow]:
        async with self._session() as s:
            q = select(ConversationRow).where(ConversationRow.key_id == key_id)
            if deployment:
                q = q.where(ConversationRow.deployment == deployment)
            q = q.order_by(ConversationRow.updated_at.desc()).limit(500)
            return (await s.scalars(q)).all()

    async def count_for(self, key_id: str) -> int:
        async with self._session() as s:
            q = select(func.count()).select_from(ConversationRow)
            return int(await s.scalar(q.where(ConversationRow.key_id == key_id)) or 0)

    async def get(self, key_id: str, conv_id: str) -> ConversationRow | None:
        async with self._session() as s:
            row = await s.get(ConversationRow, conv_id)
            return row if row is not None and row.key_id == key_id else None

    async def create(
        self,
        key_id: str,
        *,
        deployment: str,
        title: str,
        system_prompt: str,
        settings: dict[str, Any],
        messages: list[dict[str, Any]],
    ) -> ConversationRow:
        now = utcnow()
        row = ConversationRow(
            id="conv_" + secrets.token_hex(10),
            key_id=key_id,
            deployment=deployment,
            title=title,
            system_prompt=system_prompt,
            settings=settings,
            messages=[clean_message(m) for m in messages],
            created_at=now,
            updated_at=now,
        )
        async with self._session.begin() as s:
            s.add(row)
        return row

    async def update(
        self,
        key_id: str,
        conv_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        settings: dict[str, Any] | None = None,
        append: list[dict[str, Any]] | None = None,
    ) -> ConversationRow | None:
        async with self._session.begin() as s:
            row = await s.get(ConversationRow, conv_id, with_for_update=True)
            if row is None or row.key_id != key_id:
                return None
            if title is not None:
                row.title = title
            if system_prompt is not None:
                row.system_prompt = system_prompt
            if settings is not None:
                row.settings = settings
            if append:
                if len(row.messages) + len(append) > MAX_MESSAGES:
                    raise ConversationFull(
                        f"A conversation holds at most {MAX_MESSAGES} messages; start a new one"
                    )
                row.messages = [*row.messages, *(clean_message(m) for m in append)]
            row.updated_at = utcnow()
        return row

    async def delete(self, key_id: str, conv_id: str) -> bool:
        async with self._session.begin() as s:
            result = await s.execute(
                delete(ConversationRow).where(
                    ConversationRow.id == conv_id, ConversationRow.key_id == key_id
                )
            )
            return bool(getattr(result, "rowcount", 0))
