"""The field-panel emulator."""

__all__: list[str] = []
