"""fieldsync: sync-engine node, cluster, fault injection, scenarios and CLI."""

__all__: list[str] = []
