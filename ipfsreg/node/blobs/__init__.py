"""``/ipfsreg/blob/1.0.0``: fleet peers tell each other which blobs (by OCI digest) they hold or fetch."""
