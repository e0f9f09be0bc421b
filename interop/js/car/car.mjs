#!/usr/bin/env node
// CAR files read and written by npm's implementations, for ipfsreg's interop tests (interop/test_js_car.py).
//
//   node car.mjs read FILE.car            -> JSON {version, roots, blocks, indexed} on stdout
//       @ipld/car reads the CAR (v1 or v2) and every block is re-hashed against its CID. For a CARv2
//       with an index, cardex decodes the MultihashIndexSorted index and every entry must give the
//       offset @ipld/car's CarIndexer finds for that block in the payload, and every block must be
//       listed (identity CIDs aside).
//   node car.mjs write-v2 IN.car OUT.car  -> OUT.car: the blocks of IN.car (v1 or v2) as a CARv2
//       @ipld/car's CarWriter writes the CARv1 payload, cardex's MultihashIndexSortedWriter the index;
//       this script frames them (the 11-byte pragma and the 40-byte header, which neither library
//       writes).
//
// Any failure exits 1 with the reason on stderr.
import fs from 'node:fs'
import { CarReader } from '@ipld/car/reader'
import { CarIndexer } from '@ipld/car/indexer'
import { CarWriter } from '@ipld/car/writer'
import { bytesReader, readHeader } from '@ipld/car/decoder'
import { MultihashIndexSortedReader, MultihashIndexSortedWriter } from 'cardex'
import { sha256 } from 'multiformats/hashes/sha2'
import { identity } from 'multiformats/hashes/identity'
import { equals, toHex } from 'multiformats/bytes'

const PRAGMA = Uint8Array.from([0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02])
const DATA_OFFSET = PRAGMA.length + 40

async function collect (readable) {
  const chunks = []
  for await (const chunk of readable) chunks.push(chunk)
  return Buffer.concat(chunks)
}

function streamOf (bytes) {
  return new Blob([bytes]).stream()
}

async function verifiedBlocks (reader) {
  const blocks = []
  for await (const block of reader.blocks()) {
    const { code, digest } = block.cid.multihash
    if (code === identity.code) {
      if (!equals(digest, block.bytes)) throw new Error(`identity block ${block.cid} does not match its CID`)
    } else if (code === sha256.code) {
      const hashed = await sha256.digest(block.bytes)
      if (!equals(hashed.digest, digest)) throw new Error(`block ${block.cid} does not match its CID`)
    } else {
      throw new Error(`block ${block.cid}: no hasher for multihash 0x${code.toString(16)}`)
    }
    blocks.push(block)
  }
  return blocks
}

async function checkIndex (bytes, header) {
  const payload = bytes.subarray(header.dataOffset, header.dataOffset + header.dataSize)
  const offsets = new Map()
  for await (const { cid, offset } of await CarIndexer.fromBytes(payload)) {
    if (cid.multihash.code !== identity.code) offsets.set(toHex(cid.multihash.bytes), offset)
  }
  const reader = MultihashIndexSortedReader.createReader({
    reader: streamOf(bytes.subarray(header.indexOffset)).getReader()
  })
  const seen = new Set()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    const key = toHex(value.multihash.bytes)
    if (!offsets.has(key)) throw new Error(`index entry ${key} names no block of the payload`)
    if (offsets.get(key) !== value.offset) {
      throw new Error(`index entry ${key} says offset ${value.offset}, the payload has it at ${offsets.get(key)}`)
    }
    seen.add(key)
  }
  for (const key of offsets.keys()) {
    if (!seen.has(key)) throw new Error(`block ${key} is not in the index`)
  }
  return seen.size
}

async function read (path) {
  const bytes = fs.readFileSync(path)
  const header = await readHeader(bytesReader(bytes))
  const reader = await CarReader.fromBytes(bytes)
  const blocks = await verifiedBlocks(reader)
  const indexed = header.version === 2 && header.indexOffset ? await checkIndex(bytes, header) : null
  const roots = (await reader.getRoots()).map(String)
  console.log(JSON.stringify({ version: reader.version, roots, blocks: blocks.map(b => String(b.cid)), indexed }))
}

async function writeV2 (input, output) {
  const reader = await CarReader.fromBytes(fs.readFileSync(input))
  const blocks = await verifiedBlocks(reader)
  const { writer, out } = CarWriter.create(await reader.getRoots())
  const payloadPromise = collect(out)
  for (const block of blocks) await writer.put(block)
  await writer.close()
  const payload = await payloadPromise

  const { readable, writable } = new TransformStream()
  const indexPromise = collect(readable)
  const indexWriter = MultihashIndexSortedWriter.createWriter({ writer: writable.getWriter() })
  for await (const { cid, offset } of await CarIndexer.fromBytes(payload)) {
    if (cid.multihash.code !== identity.code) await indexWriter.add(cid, offset)
  }
  await indexWriter.close()
  const index = await indexPromise

  const header = Buffer.alloc(40) // characteristics (16 bytes, none set), then data offset, size, index offset
  header.writeBigUInt64LE(BigInt(DATA_OFFSET), 16)
  header.writeBigUInt64LE(BigInt(payload.length), 24)
  header.writeBigUInt64LE(BigInt(DATA_OFFSET + payload.length), 32)
  fs.writeFileSync(output, Buffer.concat([PRAGMA, header, payload, index]))
}

const [command, ...args] = process.argv.slice(2)
try {
  if (command === 'read' && args.length === 1) await read(args[0])
  else if (command === 'write-v2' && args.length === 2) await writeV2(args[0], args[1])
  else throw new Error('usage: car.mjs read FILE.car | write-v2 IN.car OUT.car')
} catch (err) {
  console.error(`car.mjs: ${err.message}`)
  process.exit(1)
}
