"""Domain events: the transactional outbox, the relay to the broker, the events API."""
