"""Operator tools behind `bagbot` (backend/cli.py): its commands, how they show things, its client.

client.py (interface), store_client.py, http_client.py; cli_support.py and render.py; the command
groups job_commands.py and verify_commands.py; smoke.py with smoke_checks.py, redis_check.py;
bench.py with bench_run.py and redis_info.py. Nothing in backend.workers or backend.api imports these.
"""
