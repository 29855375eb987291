"""Operator tools: the CLI's HTTP/store client, the smoke check, the benchmark, the Redis check."""
