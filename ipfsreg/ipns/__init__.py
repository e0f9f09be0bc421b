"""IPNS: signed, sequence-numbered records that make a repository's tags a mutable IPFS name.

``record`` is the pure codec (IpnsEntry protobuf, DAG-CBOR data, signatures, names, validation,
selection); ``validator`` is the DHT validator for the ``/ipns/`` namespace; ``keystore`` holds the
named Ed25519 keys; ``store`` keeps records and repository bindings in LevelDB; ``tagdir`` builds the
UnixFS directory a record points at; ``service`` publishes, republishes, resolves and follows.
"""
