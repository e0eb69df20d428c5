"""`fieldsync demo`: the cluster story with a promise report, and the narrated single-session demo."""

from ._cluster import run_demo as run_demo
from ._protocol import run as run_protocol_demo

__all__ = [
    "run_demo",
    "run_protocol_demo",
]
