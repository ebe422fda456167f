"""The append-only audit trail of security-relevant actions."""
