"""Benchmarks, and the fake upstream they share with the tests."""
