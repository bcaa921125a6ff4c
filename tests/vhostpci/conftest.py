"""The vhost-user tests' hang guard and short socket directory, shared."""
from tests.vhost_user.conftest import no_hang, sockdir  # noqa: F401
