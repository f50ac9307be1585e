"""Logs, metrics and alert rules."""
