"""Model providers: requests in, events out. Knows nothing of users, databases or HTTP frameworks."""
