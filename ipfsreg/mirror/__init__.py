"""The fleet mirror: namespaced upstreams (``?ns=``), upstream rules, runtime configuration, counters.

The HTTP side lives in ``ipfsreg.registry`` (proxy.py, fleet.py) and the peer protocol in
``ipfsreg.node.blobs``; this package holds what they share and what the CLI needs without them.
"""
