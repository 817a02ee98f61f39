"""FastAPI dependencies: the services container and the caller's key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from torpor.auth import ApiKey
from torpor.services import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def caller(request: Request, svc: ServicesDep) -> ApiKey:
    return svc.keys.authenticate(request.headers.get("authorization"))


def admin(key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    key.require_admin()
    return key


CallerDep = Annotated[ApiKey, Depends(caller)]
AdminDep = Annotated[ApiKey, Depends(admin)]
