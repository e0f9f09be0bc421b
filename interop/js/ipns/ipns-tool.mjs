// Drives js-libp2p/Helia's `ipns` package for interop/test_ipns_js.py: one JSON request on stdin, one
// JSON answer on stdout. Byte strings travel as hex.
//   {"op": "keygen"}                                   -> {"privateKey", "name"}
//   {"op": "create", "privateKey", "value", "sequence", "lifetimeMs", "ttlNs", "v1Compatible"}
//                                                      -> {"record", "name"}
//   {"op": "validate", "name", "record"}               -> {"ok": true, "value", "sequence", "ttl", "validity"}
//                                                      |  {"ok": false, "error", "errorName"}
//   {"op": "select", "name", "records": [...]}          -> {"index"}
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import {
  createIPNSRecord,
  marshalIPNSRecord,
  multihashToIPNSRoutingKey,
  unmarshalIPNSRecord
} from 'ipns'
import { ipnsSelector } from 'ipns/selector'
import { ipnsValidator } from 'ipns/validator'
import { base36 } from 'multiformats/bases/base36'
import { CID } from 'multiformats/cid'

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const unhex = (text) => new Uint8Array(Buffer.from(text, 'hex'))
const routingKey = (name) => multihashToIPNSRoutingKey(CID.parse(name, base36).multihash)

async function handle (request) {
  switch (request.op) {
    case 'keygen': {
      const key = await generateKeyPair('Ed25519')
      return { privateKey: hex(privateKeyToProtobuf(key)), name: key.publicKey.toCID().toString(base36) }
    }
    case 'create': {
      const key = privateKeyFromProtobuf(unhex(request.privateKey))
      const options = { v1Compatible: request.v1Compatible !== false }
      if (request.ttlNs != null) options.ttlNs = BigInt(request.ttlNs)
      const record = await createIPNSRecord(key, request.value, BigInt(request.sequence), request.lifetimeMs, options)
      return { record: hex(marshalIPNSRecord(record)), name: key.publicKey.toCID().toString(base36) }
    }
    case 'validate': {
      const raw = unhex(request.record)
      try {
        await ipnsValidator(routingKey(request.name), raw)
      } catch (err) {
        return { ok: false, error: err.message, errorName: err.name }
      }
      const record = unmarshalIPNSRecord(raw)
      return {
        ok: true,
        value: record.value,
        sequence: record.sequence.toString(),
        ttl: record.ttl.toString(),
        validity: record.validity
      }
    }
    case 'select': {
      return { index: ipnsSelector(routingKey(request.name), request.records.map(unhex)) }
    }
    default:
      throw new Error(`unknown op ${request.op}`)
  }
}

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const answer = await handle(JSON.parse(Buffer.concat(chunks).toString('utf8')))
process.stdout.write(JSON.stringify(answer) + '\n')
