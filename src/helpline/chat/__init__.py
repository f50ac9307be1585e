"""The chat use case: from a shopper's message to a recorded, grounded reply."""
