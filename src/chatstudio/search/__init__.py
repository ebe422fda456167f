"""Full-text search of a user's own messages and conversation titles (`GET /api/v1/search`)."""
