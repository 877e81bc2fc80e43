"""Interaction projections: a read-optimised summary of each contact's, account's and
opportunity's activities, kept by the worker from ``activity.created`` events."""
