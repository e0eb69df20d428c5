import os

from hypothesis import HealthCheck, settings

# `make test` (and so CI) runs the thorough profile; FIELDSYNC_HYPOTHESIS=dev is quicker.
# New examples every run (a derandomized profile replays the same ones forever), so 500 per
# property and run add up over the runs; at 1000 the codec properties alone took 2.5 min of
# a 10.8-minute suite. A failure prints the seed to rerun it with (`pytest
# --hypothesis-seed=N`) and a @reproduce_failure blob.
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
    print_blob=True,
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("FIELDSYNC_HYPOTHESIS", "ci"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def site_pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A site CA with nodes A and B and panels 1..40, made once per test run."""
    from fieldsync.site import pki

    directory = tmp_path_factory.mktemp("pki")
    pki.init_ca(directory)
    for node in ("A", "B"):
        pki.issue(directory, "node", node)
    for panel in range(1, 41):
        pki.issue(directory, "panel", panel)
    return directory


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """One PostgreSQL server for the session (per xdist worker): initdb in a temp dir owned by
    the postgres user, a free loopback port, stopped and removed at the end even after a failure."""
    from tests.store_engines import ensure_postgres

    missing = ensure_postgres()
    if missing is not None:
        pytest.skip(missing)
    from storage.postgres import running_instance

    with running_instance(prefix="fieldsync-test-pg-") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """A fresh, empty store target on each engine: a SQLite file, or a database of its own."""
    from tests.store_engines import PostgresEngine, SqliteEngine

    chosen = (
        SqliteEngine(tmp_path)
        if request.param == "sqlite"
        else PostgresEngine(request.getfixturevalue("postgres_server"))
    )
    yield chosen
    chosen.close()
