"""ipfsreg's own bitswap (/ipfs/bitswap/1.2.0, 1.1.0, 1.0.0): wire format, stream adapter, server, client.

Laid out like boxo: ``message`` (pure codec), ``network`` (streams), ``server`` (decision engine),
``client`` (wants, sessions).

Why not py-libp2p 0.8.1's ``libp2p.bitswap``: it answers wants on the stream the requester opened,
while Kubo reads only streams the remote side opens (replies travel on a new stream from the
responder), so Kubo times out fetching from it; its fetch path holds whole files in memory; and it
has its own block store, where ipfsreg serves from and stores into the LevelDB blockstore. Its
protobuf module is also slower than the hand-written codec here: encoding and decoding a 1 MiB
message takes 2.2-3.5x longer with it (``python -m bench bitswap`` prints the ratio; the tests
check the hand-written encoding is byte-identical to protobuf's).
"""
