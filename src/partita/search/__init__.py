"""Search: piece embeddings, the vector index, attribution and maps."""

from partita.search.choice import IndexChoice, choose_index

__all__ = ["IndexChoice", "choose_index"]
