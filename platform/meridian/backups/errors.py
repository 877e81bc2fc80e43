"""What an export or an import refuses, each with a message an operator can act on."""

from __future__ import annotations


class BackupError(Exception):
    """An export or import that cannot be done; nothing was written (or what was, was
    removed again)."""


class ArchiveInvalid(BackupError):
    """The file is not a tenant archive this platform reads, or it was altered."""


class WrongOperatorKey(BackupError):
    """The operator key given is not the one the archive was sealed with."""


class ImportRefused(BackupError):
    """The archive is sound but cannot be restored here (the tenant exists, the shard
    is not at the archive's schema revision, ...)."""


class ExportRefused(BackupError):
    """The tenant cannot be exported now (deleted, still onboarding, moved meanwhile)."""
