"""The local development platform, ``meridian dev``: private PostgreSQL clusters and
Redis, migrations, a demo tenant, and the API served on them.

Tooling, not the application: it imports ``meridian``, and ``meridian`` never imports it,
except the console script's lazy imports for ``meridian dev`` and for ``keys rotate-kek``
on a dev platform (an import-linter contract in pyproject.toml holds this).
"""
