"""The background worker: relay, event consumers, jobs (``meridian worker``)."""
