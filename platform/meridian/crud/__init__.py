"""The shared record machinery of every CRM resource: repository, pagination,
idempotency and conditional requests."""
