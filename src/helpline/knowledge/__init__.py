"""The store's knowledge: documents, their embeddings, a vector index and retrieval."""
