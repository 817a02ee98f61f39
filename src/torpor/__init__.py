"""torpor: self-hosted serverless inference."""

__version__ = "0.1.0"
