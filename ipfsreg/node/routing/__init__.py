"""Content and peer routing: a Kademlia DHT that Kubo and Helia share (LAN and public), with its stores,
and delegated routing over HTTP.

By role, as boxo and go-libp2p-kad-dht split it: ``message`` (wire format), ``keys`` (the
keyspace), ``addrs`` (checking peer entries), ``table`` (k-buckets), ``lookup`` (the iterative
query as a state machine), ``providers`` / ``records`` (LevelDB stores, validators), ``provide``
(the persistent provide queue and reprovider), ``dht`` (one swarm over the libp2p host: stream
handler and lookups), ``routing`` (the LAN and public DHTs together, the node's entry point),
``http_client`` (Routing V1 HTTP routers), ``local`` (the Routing V1 server's router) and
``settings`` (the ``[routing]`` config section).
"""
