"""The `torpor` command: run the server; manage deployments, keys and apps of functions
over the REST API (through `torpor.Client`)."""

from torpor.cli import chat, deployments, functions, keys
from torpor.cli.common import app

__all__ = ["app", "chat", "deployments", "functions", "keys"]
