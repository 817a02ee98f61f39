"""The control REST API under /api."""
