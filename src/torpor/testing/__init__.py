"""Test helpers for torpor: a fake OpenAI-compatible engine that runs as a real process."""
