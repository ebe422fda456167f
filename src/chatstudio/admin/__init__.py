"""Administration: accounts, budgets, the audit trail."""
