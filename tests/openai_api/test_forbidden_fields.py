"""The body check that refuses any field naming a server, URL or credential, whatever its length or
how often its name was seen before (verdicts on short names are cached)."""

from __future__ import annotations

from chatstudio.openai_api.wire import forbidden_field


def test_server_naming_fields_are_found_at_any_depth_and_length() -> None:
    long_name = "x" * 70 + "_base_url"
    for _ in range(2):  # the second pass answers from the cache
        assert forbidden_field({"model": "m", "api_base": "http://evil"}) == "api_base"
        assert forbidden_field({"model": "m", "extra_body": {"API_KEY": "k"}}) == "extra_body.API_KEY"
        assert forbidden_field({"model": "m", long_name: 1}) == long_name
        assert forbidden_field({"model": "m", "x" * 70: 1, "temperature": 1}) is None
        # Inside user content a key named `url` is just data.
        assert forbidden_field({"messages": {"url": "http://example.com"}}) is None
