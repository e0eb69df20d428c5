"""fieldsync: the server side of the access-control loop, and the harness that tests it.

The package is cut into subpackages, each with its own small public API:

- ``fieldsync.engine``: the product. A node (sessions, group-commit ingest, config push,
  listener and dialer), the cluster (lease, heartbeats, failover, STONITH), the supervisor.
- ``fieldsync.site``: site files (TOML), what they mean for the engine, the site's PKI.
- ``fieldsync.lab``: the pair on real hosts: network namespaces joined by a bridge, the VIP
  moved by keepalived (VRRP), and the faults of real hosts (power lost, a NIC down, a crash).
- ``fieldsync.harness``: what tests the product: fault proxies and toxics with their HTTP
  API, scenario files, the runner, the promise checker, reports, random schedules, the
  virtual clock, the virtual serial line. The engine never imports it.
- ``fieldsync.demo``: ``fieldsync demo``.
- ``fieldsync.console``: ``fieldsync console``: the web console (the pair, the fleet, the alarms, live).
- ``fieldsync.bench``: ``fieldsync bench``: benchmarks that measure their bound in the same run.
- ``fieldsync.cli``: the ``fieldsync`` command.
- ``fieldsync.testing``: the pytest plugin: a cluster, its panels and its faults as fixtures of
  your own tests, the promises checked at teardown (docs/testing.md).
- ``fieldsync.conformance``: the spec's conformance battery; it imports none of the above.

Importing ``fieldsync`` imports none of them: a process takes only what it uses.
"""

__all__: list[str] = []
