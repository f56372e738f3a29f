"""netsim: a simulated messaging network speaking the gateway's link protocol, as a process or in-process.

This package owns the simulation only; it must never import gateway modules other than gateway.network (codec, parse_url).
"""

from loadtest.netsim.config import NetsimConfig, config_from_mapping, load_config
from loadtest.netsim.core import Network
from loadtest.netsim.server import NetsimServer, bench_submits, fetch_stats, serve_netsim

__all__ = [
    "NetsimConfig",
    "NetsimServer",
    "Network",
    "bench_submits",
    "config_from_mapping",
    "fetch_stats",
    "load_config",
    "serve_netsim",
]
