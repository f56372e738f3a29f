"""gateway: a self-hosted, high-throughput business messaging gateway.

The package is built from a pure core (no I/O, injected clock) wrapped in thin trio shells;
`gateway.app` is the composition root and the only place that wires components together.
"""

__version__ = "0.1.0"
