"""Uploaded files: streamed in under a size limit, checked by content, stored under server-made names."""
