"""Search: piece embeddings, the vector index, attribution and maps."""
