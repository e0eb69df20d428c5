"""A site: its TOML file (panels, nodes, addresses, every CLI flag's default), its PKI, and the setup of
a fresh one (a pair's certificates, a seeded configuration).
"""

from . import pki as pki
from ._files import FleetSpec as FleetSpec
from ._files import NodeSpec as NodeSpec
from ._files import Site as Site
from ._files import SiteError as SiteError
from ._files import heartbeat_port as heartbeat_port
from ._files import issue_pair_pki as issue_pair_pki
from ._files import load_site as load_site
from ._files import parse_address as parse_address
from ._files import parse_size as parse_size
from ._files import seed_config as seed_config
from ._files import write_pair_site as write_pair_site

__all__ = [
    "FleetSpec",
    "NodeSpec",
    "Site",
    "SiteError",
    "heartbeat_port",
    "issue_pair_pki",
    "load_site",
    "parse_address",
    "parse_size",
    "pki",
    "seed_config",
    "write_pair_site",
]
