"""The ``fieldsync`` command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fieldsync")
def main() -> None:
    """fieldsync: field panels, a sync-engine cluster, faults and the promises P1-P7."""


@main.command()
@click.option("--events", default=1000, show_default=True, help="Events the panel uploads.")
@click.option("--batch", default=250, show_default=True, help="Records per EVENT_BATCH.")
def demo(events: int, batch: int) -> None:
    """Run the demo: a panel and a node exchange a session (handshake, batches, acks, config)."""
    from ._protocol_demo import run

    acked = run(click.echo, events=events, batch=batch)
    if acked != events:
        raise click.ClickException(f"only {acked} of {events} events were acknowledged")
