"""The studio page: a small web client served by the backend itself at `/` (static files, no build step)."""
