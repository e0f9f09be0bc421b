"""Peer discovery beyond configured peerings: mDNS on the local network."""
