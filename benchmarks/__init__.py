"""Benchmarks: each measures against a bound in one run and can write its figures as JSON.

The shared helpers (a ``fieldsync serve`` node process for the length of a measurement, a
process's CPU from ``/proc``, the JSON file with the machine's particulars) live in
``fieldsync.bench``, where ``fieldsync bench`` uses them too.
"""

from fieldsync.bench import cpu_seconds as cpu_seconds
from fieldsync.bench import node_process as node_process
from fieldsync.bench import write_json as write_json

__all__ = ["cpu_seconds", "node_process", "write_json"]
