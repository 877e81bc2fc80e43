"""Imports and exports: bulk transfers of a tenant's records as files, run by the worker."""
