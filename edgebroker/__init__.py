"""edgebroker: an MQTT 3.1/3.1.1 broker for edge gateways.

Layers, imported only downward: errors, packets, log -> codec, config -> topics, session, sysstats ->
broker (the sans-IO core) -> server (the selectors loop) -> cli.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
