"""Test doubles that speak real wire formats (Gemini REST, Ollama) plus a fault-injecting TCP proxy."""
