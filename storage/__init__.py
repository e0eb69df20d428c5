"""Panel event buffer, server event store, config store."""

__all__: list[str] = []
