"""Exact rate limits: per IP, per API key, per anonymous conversation, and a global concurrency cap.

Import from the submodules (``policies``, ``memory``, ``redis``, ``fallback``, ``service``); this package file stays
empty so ``config.py`` can import ``policies`` without pulling in Redis.
"""
