"""A site: its TOML file (panels, nodes, addresses, every CLI flag's default), its PKI, and the setup of
a fresh one (a pair's certificates, a seeded configuration). Also the typed TOML loader that the site
file and the harness's scenario files share (``TomlDocument``, ``toml_table``): errors at their exact line.
"""

from . import pki as pki
from ._files import FleetSpec as FleetSpec
from ._files import NodeSpec as NodeSpec
from ._files import PanelSpec as PanelSpec
from ._files import Site as Site
from ._files import SiteError as SiteError
from ._files import Size as Size
from ._files import check_intervals as check_intervals
from ._files import heartbeat_port as heartbeat_port
from ._files import load_site as load_site
from ._files import parse_address as parse_address
from ._files import parse_site as parse_site
from ._files import parse_size as parse_size
from ._pair import PairHosts as PairHosts
from ._pair import issue_pair_pki as issue_pair_pki
from ._pair import pair_site_toml as pair_site_toml
from ._pair import seed_config as seed_config
from ._pair import write_pair_site as write_pair_site
from ._toml import KeyPath as KeyPath
from ._toml import TomlDocument as TomlDocument
from ._toml import TomlFileError as TomlFileError
from ._toml import TomlTable as TomlTable
from ._toml import dump_toml as dump_toml
from ._toml import key_lines as key_lines
from ._toml import refuse as refuse
from ._toml import toml_table as toml_table

__all__ = [
    "check_intervals",
    "FleetSpec",
    "KeyPath",
    "NodeSpec",
    "PanelSpec",
    "Site",
    "SiteError",
    "Size",
    "TomlDocument",
    "TomlFileError",
    "TomlTable",
    "dump_toml",
    "heartbeat_port",
    "PairHosts",
    "issue_pair_pki",
    "key_lines",
    "load_site",
    "pair_site_toml",
    "parse_address",
    "parse_site",
    "parse_size",
    "pki",
    "refuse",
    "seed_config",
    "toml_table",
    "write_pair_site",
]
