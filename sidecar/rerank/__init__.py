"""Reranking: the service that orchestrates a rerank, the batcher, the scorers and their caches."""
