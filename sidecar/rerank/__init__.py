"""Reranking: the pipeline (bytes and dicts in, an outcome out), the batcher, caches, the breaker, the scorers."""
