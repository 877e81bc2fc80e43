"""What stops a transfer job for good (as opposed to a failure saq retries)."""

from __future__ import annotations


class JobFailed(Exception):
    """The job cannot go on (its requester lost the permission, the file has no header,
    a custom field it names was archived): it ends ``failed`` with this message."""


class Superseded(Exception):
    """Another run of the job committed progress since this one read it (a worker that
    was thought dead came back): this run stops, the other goes on."""
