"""Benchmark harness: Meridian's hot endpoints against a bare asyncpg endpoint and a
hello-world endpoint, measured with wrk in one run (``python -m loadtests.bench``)."""
