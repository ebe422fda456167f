"""Imports every domain's models so Base.metadata is complete (Alembic, tests)."""

from __future__ import annotations


def import_all_models() -> None:
    import chatstudio.apikeys.models
    import chatstudio.audit.models
    import chatstudio.chat.models
    import chatstudio.files.models
    import chatstudio.usage.models
    import chatstudio.users.models  # noqa: F401
