"""Playground conversations: list, create, read, append messages, delete; per API key."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from torpor.api.deps import CallerDep, ServicesDep
from torpor.conversations import MAX_MESSAGES, Conversations, full_view, summary_view
from torpor.errors import NotFound, QuotaExceeded
from torpor.validation import JsonObject

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)
    stopped: bool = False  # an answer cut short with Stop


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(min_length=1, max_length=63)
    title: str = Field(default="New conversation", max_length=200)
    system_prompt: str = Field(default="", max_length=100_000)
    settings: JsonObject = Field(default_factory=dict)
    messages: list[Message] = Field(default_factory=list)


class ConversationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    settings: JsonObject | None = None
    append: list[Message] | None = None


def _store(svc: ServicesDep) -> Conversations:
    return Conversations(svc.store.engine)


def _missing(conv_id: str) -> NotFound:
    return NotFound(f"Conversation {conv_id!r} not found")


@router.get("")
async def list_conversations(
    svc: ServicesDep, key: CallerDep, deployment: str | None = None
) -> dict[str, Any]:
    rows = await _store(svc).list_for(key.id, deployment)
    return {"data": [summary_view(r) for r in rows]}


@router.post("", status_code=201)
async def create(body: ConversationCreate, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    if not key.may_use(body.deployment):
        raise NotFound(f"Deployment {body.deployment!r} not found")
    conversations = _store(svc)
    cap = svc.settings.max_conversations_per_key
    if await conversations.count_for(key.id) >= cap:
        raise QuotaExceeded(
            f"This API key has {cap} stored conversations, the most it may keep; delete some first"
        )
    if len(body.messages) > MAX_MESSAGES:
        raise QuotaExceeded(f"A conversation holds at most {MAX_MESSAGES} messages")
    row = await conversations.create(
        key.id,
        deployment=body.deployment,
        title=body.title,
        system_prompt=body.system_prompt,
        settings=body.settings,
        messages=[m.model_dump() for m in body.messages],
    )
    return full_view(row)


@router.get("/{conv_id}")
async def get(conv_id: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    row = await _store(svc).get(key.id, conv_id)
    if row is None:
        raise _missing(conv_id)
    return full_view(row)


@router.patch("/{conv_id}")
async def update(
    conv_id: str, body: ConversationPatch, svc: ServicesDep, key: CallerDep
) -> dict[str, Any]:
    row = await _store(svc).update(
        key.id,
        conv_id,
        title=body.title,
        system_prompt=body.system_prompt,
        settings=body.settings,
        append=[m.model_dump() for m in body.append] if body.append else None,
    )
    if row is None:
        raise _missing(conv_id)
    return full_view(row)


@router.delete("/{conv_id}")
async def delete(conv_id: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    if not await _store(svc).delete(key.id, conv_id):
        raise _missing(conv_id)
    return {"id": conv_id, "deleted": True}
