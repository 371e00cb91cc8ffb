"""distren: a distributed render farm."""

__version__ = "0.1.0"
