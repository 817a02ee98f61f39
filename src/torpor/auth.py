"""API keys: bearer tokens stored as SHA-256 hashes, checked in memory on the request path."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor.errors import Forbidden, Unauthorized
from torpor.store import Store
from torpor.store.db import utcnow
from torpor.store.tables import ApiKeyRow

KEY_PREFIX = "tp-"
# TORPOR_ADMIN_KEY must be at least this long (a generated key has 46 characters).
MIN_ADMIN_KEY_LENGTH = 24
# The listed prefix of a key: at most this many characters and a third of the key.
MAX_LISTED_PREFIX = 8


def listed_prefix(secret: str) -> str:
    return secret[: min(MAX_LISTED_PREFIX, len(secret) // 3)]


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    # None: every deployment.
    deployments: frozenset[str] | None
    budget_usd_monthly: float | None = None
    budget_tokens_monthly: int | None = None
    plan_tokens: int | None = None
    budget_gpu_usd_monthly: float | None = None

    def may_use(self, deployment: str) -> bool:
        return self.admin or self.deployments is None or deployment in self.deployments

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("This API key is not an admin key")


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'")
    return token.strip()


class KeyRing:
    """Active keys by hash; the store is the source of truth, this is its in-memory index."""

    def __init__(self, store: Store):
        self._store = store
        self._by_hash: dict[str, ApiKey] = {}

    async def load(self) -> None:
        rows = await self._store.list_keys()
        self._by_hash = {r.key_hash: key_of_row(r) for r in rows if r.revoked_at is None}

    def authenticate(self, header: str | None) -> ApiKey:
        key = self._by_hash.get(hash_key(parse_bearer(header)))
        if key is None:
            raise Unauthorized("Invalid API key")
        return key

    async def create(
        self,
        name: str,
        *,
        admin: bool = False,
        deployments: list[str] | None = None,
        secret: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> tuple[ApiKeyRow, str]:
        secret = secret or generate_key()
        row = ApiKeyRow(
            id="key_" + secrets.token_hex(8),
            name=name,
            prefix=listed_prefix(secret),
            key_hash=hash_key(secret),
            admin=admin,
            deployments=sorted(set(deployments)) if deployments is not None else None,
            created_at=utcnow(),
            revoked_at=None,
            **(limits or {}),
        )
        await self._store.add_key(row)
        self._by_hash[row.key_hash] = key_of_row(row)
        return row, secret

    async def update(self, key_id: str, changes: dict[str, Any]) -> ApiKeyRow | None:
        """Change scope, budgets or plan of a key; the in-memory index follows."""
        row = await self._store.update_key(key_id, changes)
        if row is not None and row.revoked_at is None:
            self._by_hash[row.key_hash] = key_of_row(row)
        return row

    async def revoke(self, key_id: str) -> bool:
        done = await self._store.revoke_key(key_id, utcnow())
        self._by_hash = {h: k for h, k in self._by_hash.items() if k.id != key_id}
        return done

    def has_admin(self) -> bool:
        return any(k.admin for k in self._by_hash.values())

    def knows(self, secret: str) -> bool:
        return hash_key(secret) in self._by_hash

    async def ensure_admin(self, secret: str, name: str) -> None:
        """Make `secret` an active admin key: created, or re-activated when an earlier
        revoke (or a change of its scope) left its row behind."""
        digest = hash_key(secret)
        row = await self._store.key_by_hash(digest)
        if row is None:
            await self.create(name, admin=True, secret=secret)
            return
        if row.revoked_at is not None or not row.admin or row.deployments is not None:
            row = await self._store.update_key(
                row.id, {"revoked_at": None, "admin": True, "deployments": None}
            )
            assert row is not None
        self._by_hash[digest] = key_of_row(row)


def key_of_row(row: ApiKeyRow) -> ApiKey:
    """The in-memory key of a stored row (scope, budgets, plan)."""
    deps = frozenset(row.deployments) if row.deployments is not None else None
    return ApiKey(
        id=row.id,
        name=row.name,
        admin=row.admin,
        deployments=deps,
        budget_usd_monthly=row.budget_usd_monthly,
        budget_tokens_monthly=row.budget_tokens_monthly,
        plan_tokens=row.plan_tokens,
        budget_gpu_usd_monthly=row.budget_gpu_usd_monthly,
    )


def check_admin_key(secret: str) -> None:
    """Refuse a TORPOR_ADMIN_KEY that is too short to be a secret."""
    if len(secret) < MIN_ADMIN_KEY_LENGTH:
        raise ValueError(
            f"TORPOR_ADMIN_KEY is {len(secret)} characters long; it must have at least "
            f"{MIN_ADMIN_KEY_LENGTH} (generate one with: "
            "python -c 'import secrets; print(\"tp-\" + secrets.token_urlsafe(32))')"
        )


async def bootstrap_admin(keys: KeyRing, configured: str | None, data_dir: Path) -> str | None:
    """Make sure an admin key exists. Returns a newly generated key to print once, else None.

    TORPOR_ADMIN_KEY is registered when given; otherwise the first start generates one and
    saves it 0600 as admin.key in the data dir (the CLI reads it from there).
    """
    if configured:
        check_admin_key(configured)
        await keys.ensure_admin(configured, "admin (TORPOR_ADMIN_KEY)")
        return None
    if keys.has_admin():
        return None
    secret = generate_key()
    await keys.create("admin", admin=True, secret=secret)
    path = data_dir / "admin.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    return secret
