"""Frameworks: what each one's form holds (`torpor.engines.describe`), and a dry run of the
server's own validation so a form can show a refusal before anything is created."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from torpor.api.deps import AdminDep, CallerDep
from torpor.engines.describe import FRAMEWORK_INFO
from torpor.errors import InvalidSpec
from torpor.spec import DeploymentSpec
from torpor.validation import format_errors

router = APIRouter(prefix="/api/frameworks", tags=["frameworks"])


@router.get("")
async def list_frameworks(_: CallerDep) -> dict[str, Any]:
    return {"data": [info.view() for info in FRAMEWORK_INFO.values()]}


@router.post("/validate")
async def validate(body: dict[str, Any], _: AdminDep) -> dict[str, Any]:
    """The spec as `POST /api/deployments` would accept it (defaults filled in), or the same
    422 it would answer; nothing is created."""
    try:
        spec = DeploymentSpec.model_validate(body)
    except ValidationError as exc:
        raise InvalidSpec(format_errors(exc.errors())) from None
    return {"valid": True, "spec": spec.model_dump(mode="json")}
