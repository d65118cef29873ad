"""A loopback DNS server serving the test module's ZONE, and a resolver pointed at it."""

from __future__ import annotations

from typing import Iterator

import pytest

from scattergate.net.dns import Resolver
from tests.support.dns_server import DnsTestServer, resolver_config


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[DnsTestServer]:
    with DnsTestServer(request.module.ZONE) as srv:
        yield srv


@pytest.fixture
def resolver(server: DnsTestServer, request: pytest.FixtureRequest) -> Iterator[Resolver]:
    server.set_zone(request.module.ZONE)  # undo what the previous test changed
    r = Resolver(resolver_config(server))
    yield r
    r.close()
