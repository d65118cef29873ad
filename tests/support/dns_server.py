"""The loopback DNS server for tests: it lives in the package (scattergate simulate uses it)."""

from scattergate.simulate.dns_server import DnsTestServer, resolver_config

__all__ = ["DnsTestServer", "resolver_config"]
