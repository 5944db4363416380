"""rumpus-secure: a secure multi-protocol file server on Twisted."""

__version__ = "0.1.0"
