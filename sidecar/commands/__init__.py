"""Subcommands of rerank-sidecar, one module each."""
