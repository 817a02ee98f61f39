"""Metering: usage events, worker and storage time, prices, budgets, rollups."""
