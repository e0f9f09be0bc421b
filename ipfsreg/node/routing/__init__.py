"""Content and peer routing of the node: the DHT, delegated routing over HTTP, LAN discovery."""
