"""rerank-sidecar: a reverse proxy that reranks Elasticsearch and OpenSearch results with a cross-encoder."""
