"""Accounts, sessions and authentication."""
