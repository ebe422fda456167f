"""API keys: long-lived credentials for scripts and OpenAI SDKs, stored only as a hash."""
