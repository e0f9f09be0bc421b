"""ipfsreg: a container image registry on IPFS, in one Python process."""

__version__ = "0.1.0"
