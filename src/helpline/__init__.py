"""Helpline: AI customer support for online stores."""

__version__ = "0.1.0"
