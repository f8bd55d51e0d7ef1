"""`rerank-sidecar train`: fine-tune cross-encoders and bi-encoders on a user's own judgments."""
