"""frugal: language models on limited compute and little data."""

__version__ = "0.1.0"
