"""Load tests and benchmarks for Meridian.

The Locust scenarios (``locustfile.py`` with ``api``, ``credentials``, ``tokens``) use only
Locust and the standard library, so they run on any load generator; the headless runner
(``runner.py``) turns a run into a summary with pass/fail thresholds and imports
``meridian`` only when asked to seed. The seeder (``seed.py``, ``meridian seed``) imports
``meridian`` (onboarding, the runtime) and runs where the platform's databases are
reachable, as do the benchmarks that import it (``*_bench.py``, ``bench/``).
"""
