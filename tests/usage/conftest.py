from tests.apikeys.support import fake_upstream, studio  # noqa: F401
