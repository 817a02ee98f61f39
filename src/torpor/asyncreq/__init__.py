"""Async requests: submit now, fetch later; stored in the database so nothing accepted is
lost across restarts."""

from torpor.asyncreq.service import AsyncDeps, AsyncDisabled, AsyncRequests

__all__ = ["AsyncDeps", "AsyncDisabled", "AsyncRequests"]
