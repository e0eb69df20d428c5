"""fieldsync for your own tests: the pytest plugin (``fieldsync.testing.plugin``, entry point
``pytest11``) and the types its fixtures give you. docs/testing.md has the fixtures and a
worked example.

The trade-off: a fixture here is a whole scenario run (``fieldsync.harness.ScenarioRun``: two
node processes, real SIGKILL, fault proxies, the fleet with journals, P1-P7 checked at the
end), driven by the test's body instead of a timeline. That is seconds per test, not
milliseconds, and it is the same run, so a test proves what a scenario file proves.

pytest imports the plugin into every run of a project that installs fieldsync, so this
package is cheap to import: the types below (and with them the harness, trio and the
emulator) are imported when first asked for.
"""

import typing as _typing

__all__ = ["Cluster", "PromiseBroken", "WaitTimedOut"]

if _typing.TYPE_CHECKING:
    from ._cluster import Cluster as Cluster
    from ._cluster import PromiseBroken as PromiseBroken
    from ._cluster import WaitTimedOut as WaitTimedOut


def __getattr__(name: str) -> _typing.Any:
    if name in __all__:
        from . import _cluster

        value = getattr(_cluster, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
