"""Money as decimals: costs are computed exactly and stored in integer nano-dollars
(migration 0008 converts the float columns of older databases), and every money field of
the API is a number rounded to 6 decimals (CSV: 6 fixed decimals), whose parts add up to
their totals exactly."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from tests.conftest import TorporServer, fake_spec
from torpor.metering.pricing import Prices
from torpor.metering.records import money, money_decimal
from torpor.store import db as store_db

# 1.5e-09 USD per prompt token, 7.55e-08 per completion token: float arithmetic gives
# costs like 0.00007550000000000002 and 1.5e-09.
PRICES = {"prompt_per_mtok": 0.0015, "completion_per_mtok": 0.0755}
MESSAGES: Any = [{"role": "user", "content": "hello"}]


def test_request_cost_is_exact_in_nano_dollars() -> None:
    p = Prices(prompt_per_mtok=0.0015, completion_per_mtok=0.0755, gpu_hourly=0.0,
               storage_gb_month=0.1)  # fmt: skip
    assert (3 * 0.0015 + 7 * 0.0755) / 1e6 == 5.329999999999999e-07  # what floats did
    assert p.request_nusd(3, 7) == 533  # 4.5 + 528.5 nano-dollars, exactly 533
    assert p.request_nusd(0, 1000) == 75_500  # $0.0000755, exactly
    assert p.request_nusd(1, 0) == 2  # 1.5 nano-dollars, rounded half to even
    assert p.request_nusd(3, 0) == 4  # 4.5 -> 4
    assert money(75_500, nano=True) == 0.000076  # half to even at 6 decimals
    assert money(0.00007550000000000002) == 0.000076
    assert money(1.5e-09) == 0.0
    # 730 h x 3600 s of 1 GB at $0.1 per GB-month: $0.1
    assert p.storage_nusd(730 * 3600.0) == 100_000_000


def _six_decimals(value: Any) -> bool:
    d = Decimal(repr(value))
    return isinstance(value, float | int) and d == d.quantize(Decimal("0.000001"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    server = TorporServer(tmp_path_factory.mktemp("money"),
                          {"TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false"}).start()  # fmt: skip
    try:
        yield server
    finally:
        server.stop()
        assert server.survivors() == []


def test_api_money_fields_are_rounded_and_add_up(srv: TorporServer) -> None:
    srv.deploy(fake_spec("cheap", engine_args="--tokens 7", min_workers=1, prices=PRICES))
    srv.wait_for("cheap", lambda d: d["status"] == "ready")
    with srv.api() as c:
        r = c.post("/api/keys", json={"name": "payer", "budget_usd_monthly": 5.0})
        key = r.json()["key"]
    client = srv.openai(key)
    for _ in range(7):
        client.chat.completions.create(model="cheap", messages=MESSAGES)
    deadline = time.monotonic() + 10
    with srv.api(key) as c:
        while c.get("/api/usage/summary").json()["requests"] < 7:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with srv.api() as admin, srv.api(key) as mine:
        texts = {
            "summary": admin.get("/api/usage/summary").text,
            "by-deployment": admin.get("/api/usage/by-deployment").text,
            "timeseries": admin.get("/api/usage/timeseries", params={"step": "5m"}).text,
            "by-key": admin.get("/api/usage/by-key").text,
            "invoices": admin.get("/api/invoices").text,
            "me": mine.get("/api/me").text,
            "keys": admin.get("/api/keys").text,
        }
        invoice = admin.get("/api/invoices").json()
        by_key = admin.get("/api/usage/by-key").json()
        me = mine.get("/api/me").json()
        keys = admin.get("/api/keys").json()["data"]
        summary = admin.get("/api/usage/summary").json()
        csv_text = admin.get("/api/invoices", params={"format": "csv"}).text
    for name, text in texts.items():
        assert "e-09" not in text and "0000000000" not in text, (name, text)
    # 7 requests of 1 prompt + 7 completion tokens: 7 x (1.5 + 528.5) nano-dollars.
    assert summary["cost"] == 0.000004  # 3,710 nano-dollars -> $0.000004
    assert me["usage_month"]["cost"] == 0.000004
    payer = next(k for k in keys if k["name"] == "payer")
    assert payer["spend_month_usd"] == 0.000004 and _six_decimals(payer["gpu_spend_month_usd"])
    money_fields = ("token_cost", "gpu_cost", "storage_cost", "total_cost")
    for ln in invoice["data"]:
        assert all(_six_decimals(ln[f]) for f in money_fields), ln
        parts = sum(Decimal(repr(ln[f])) for f in money_fields[:3])
        assert parts == Decimal(repr(ln["total_cost"])), ln
    lines = sum((Decimal(repr(ln["total_cost"])) for ln in invoice["data"]), Decimal(0))
    assert lines == Decimal(repr(invoice["total_cost"]))
    for ln in by_key["data"]:
        assert all(_six_decimals(ln[f]) for f in ("token_cost", "gpu_cost", "total_cost"))
        assert Decimal(repr(ln["token_cost"])) + Decimal(repr(ln["gpu_cost"])) == Decimal(
            repr(ln["total_cost"])
        )
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert rows and all(len(r[f].partition(".")[2]) == 6 for r in rows for f in money_fields)
    assert sum(Decimal(r["total_cost"]) for r in rows) == Decimal(repr(invoice["total_cost"]))


def test_migration_0008_converts_float_costs(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{db}")

    def upgrade(revision: str) -> None:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    upgrade("0007")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO usage_hourly (hour, deployment, key_id, requests, errors, "
            "prompt_tokens, completion_tokens, latency_ms_sum, ttft_ms_sum, ttft_count, "
            "cold_starts, cost) VALUES ('2025-01-01 00:00:00', 'd', 'k', 1, 0, 1, 1, 1.0, 1.0, "
            "1, 0, 0.00007550000000000002)"
        )
        conn.execute(
            "INSERT INTO storage_hourly (hour, deployment, gb_seconds, last_gb, cost) "
            "VALUES ('2025-01-01 00:00:00', 'd', 1.0, 1.0, 1.5e-09)"
        )
    upgrade("head")
    engine.dispose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT cost_nusd FROM usage_hourly").fetchall() == [(75_500,)]
        assert conn.execute("SELECT cost_nusd FROM storage_hourly").fetchall() == [(2,)]
        columns = [r[1] for r in conn.execute("PRAGMA table_info(usage_events)")]
        assert "cost_nusd" in columns and "cost" not in columns
    assert money_decimal(75_500, nano=True) == Decimal("0.000076")
