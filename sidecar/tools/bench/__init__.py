"""Benchmarks: each compares against a named baseline in the same run and prints the ratio."""
