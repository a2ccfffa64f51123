/**
 * Both codecs against frames recorded from memcached 1.6.18: requests are
 * encoded byte for byte as recorded, recorded replies parse to the right
 * outcome, and a reply cut at any byte is reported incomplete, never misread.
 */
import test from 'ava';
import { BinaryCodec } from '../../src/transport/binary-codec.js';
import { MetaCodec, wireKey } from '../../src/transport/meta-codec.js';
import { emptyReply, ProtocolError, type Codec, type Reply } from '../../src/transport/codec.js';

const hex = (s: string): Buffer => Buffer.from(s, 'hex');
const text = (s: string): Buffer => Buffer.from(s, 'latin1');

test('binary requests are encoded as recorded', (t) => {
  const c = new BinaryCodec();
  t.is(c.add('k', Buffer.from('hi'), 10, 1).toString('hex'), '80020001080000000000000b000000010000000000000000000000000000000a6b6869');
  t.is(c.get('k', 3).toString('hex'), '8000000100000000000000010000000300000000000000006b');
  t.is(c.casSet('k', Buffer.from('xx'), 10, 999n, 5).toString('hex'), '80010001080000000000000b0000000500000000000003e7000000000000000a6b7878');
  t.is(c.casDelete('nope', 1n, 6).toString('hex'), '8004000400000000000000040000000600000000000000016e6f7065');
  // SASL_AUTH (0x21), key 'PLAIN', value '\0u\0p': body 9 bytes.
  t.is(c.saslPlain('u', 'p').toString('hex'), '802100050000000000000009000000000000000000000000' + Buffer.from('PLAIN\0u\0p').toString('hex'));
});

test('a binary renewal reuses its request with a patched header', (t) => {
  const c = new BinaryCodec();
  const value = Buffer.from('v');
  const first = c.casSet('k', value, 10, 1n, 1);
  const second = c.casSet('k', value, 12, 2n, 2);
  t.is(first, second);
  t.is(second.readUInt32BE(12), 2);
  t.is(second.readBigUInt64BE(16), 2n);
  t.is(second.readUInt32BE(28), 12);
});

// Replies memcached 1.6.18 sent to: add k (new), add k (exists), get k, get nope, CAS set with a wrong CAS, CAS delete of a missing key.
const binaryReplies = hex(
  '810200000000000000000000000000010000000000000001'
  + '810200000000000200000014000000020000000000000000446174612065786973747320666f72206b65792e'
  + '8100000004000000000000060000000300000000000000010000000068 69'.replace(' ', '')
  + '8100000000000001000000090000000400000000000000004e6f7420666f756e64'
  + '810100000000000200000014000000050000000000000000446174612065786973747320666f72206b65792e'
  + '8104000000000001000000090000000600000000000000004e6f7420666f756e64',
);

// Replies memcached 1.6.18 sent to the equivalent meta requests, plus an error line.
const metaReplies = text('HD c1\r\nNS c0\r\nVA 2 c1\r\nhi\r\nEN\r\nEX c0\r\nNF\r\n');

interface Parsed { status: Reply['status']; cas: bigint; value: string; seq: number }

function parseAll(codec: Codec, buf: Buffer): Parsed[] {
  const reply = emptyReply();
  const out: Parsed[] = [];
  let offset = 0;
  while (offset < buf.length) {
    const end = codec.parse(buf, offset, reply);
    if (end === -1) throw new Error(`incomplete at ${offset}`);
    out.push({ status: reply.status, cas: reply.cas, value: reply.value.toString(), seq: reply.seq });
    offset = end;
  }
  return out;
}

const expected = [
  { status: 'ok', cas: 1n, value: '' },
  { status: 'exists', cas: 0n, value: '' },
  { status: 'ok', cas: 1n, value: 'hi' },
  { status: 'not_found', cas: 0n, value: '' },
  { status: 'exists', cas: 0n, value: '' },
  { status: 'not_found', cas: 0n, value: '' },
];

test('recorded binary replies parse to their outcomes and echo the request ids', (t) => {
  const parsed = parseAll(new BinaryCodec(), binaryReplies);
  t.deepEqual(parsed.map(({ status, value }) => ({ status, value })), expected.map(({ status, value }) => ({ status, value })));
  t.is(parsed[0]?.cas, 1n);
  t.is(parsed[2]?.cas, 1n);
  t.deepEqual(parsed.map((p) => p.seq), [1, 2, 3, 4, 5, 6]);
});

test('recorded meta replies parse to their outcomes', (t) => {
  const parsed = parseAll(new MetaCodec(), metaReplies);
  t.deepEqual(parsed.map(({ status, cas, value }) => ({ status, cas, value })), expected);
  t.true(parsed.every((p) => p.seq === -1));
});

for (const [name, codec, frames] of [['binary', new BinaryCodec(), binaryReplies], ['meta', new MetaCodec(), metaReplies]] as const) {
  test(`${name}: a reply cut at any byte is incomplete, and whole again once the rest arrives`, (t) => {
    const reply = emptyReply();
    let offset = 0;
    let count = 0;
    while (offset < frames.length) {
      const end = codec.parse(frames, offset, reply);
      for (let cut = offset + 1; cut < end; cut++) {
        t.is(codec.parse(frames.subarray(0, cut), offset, emptyReply()), -1, `cut at ${cut}`);
      }
      offset = end;
      count++;
    }
    t.is(count, 6);
  });
}

test('meta requests are encoded as documented in protocol.txt', (t) => {
  const c = new MetaCodec();
  t.is(c.add('k', Buffer.from('hi'), 10).toString(), 'ms k 2 T10 c ME\r\nhi\r\n');
  t.is(c.get('k').toString(), 'mg k v c\r\n');
  t.is(c.casSet('k', Buffer.from('xx'), 10, 999n).toString(), 'ms k 2 T10 c C999\r\nxx\r\n');
  t.is(c.casDelete('k', 18_446_744_073_709_551_615n).toString(), 'md k C18446744073709551615\r\n');
  t.is(c.saslPlain(), undefined);
});

test('meta keys the text protocol cannot carry go base64 with the b flag; UTF-8 keys go as they are', (t) => {
  t.is(wireKey('memlock:plain'), 'memlock:plain');
  t.is(wireKey('memlock:héllo'), 'memlock:héllo');
  t.is(wireKey('a b'), `${Buffer.from('a b').toString('base64')} b`);
  t.is(wireKey('a\nb'), `${Buffer.from('a\nb').toString('base64')} b`);
  t.throws(() => wireKey(' '.repeat(200)), { instanceOf: RangeError });
  t.is(new MetaCodec().get('a b').toString(), `mg ${Buffer.from('a b').toString('base64')} b v c\r\n`);
});

test('meta error replies: SERVER_ERROR keeps the stream, CLIENT_ERROR and ERROR are fatal, garbage throws', (t) => {
  const c = new MetaCodec();
  const reply = emptyReply();
  t.is(c.parse(text('SERVER_ERROR out of memory storing object\r\n'), 0, reply), 43);
  t.is(reply.status, 'error');
  t.false(reply.fatal);
  t.regex(reply.message, /out of memory/);
  c.parse(text('CLIENT_ERROR bad command line format\r\n'), 0, reply);
  t.true(reply.fatal);
  c.parse(text('ERROR\r\n'), 0, reply);
  t.true(reply.fatal);
  t.throws(() => c.parse(text('STORED\r\n'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('VA 2 c1\r\nhiXY'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('x'.repeat(9000)), 0, reply), { instanceOf: ProtocolError });
});

test('binary: bytes that are not a response throw; an auth error is an error reply', (t) => {
  const c = new BinaryCodec();
  const reply = emptyReply();
  t.throws(() => c.parse(text('HD c1\r\n'.padEnd(24, ' ')), 0, reply), { instanceOf: ProtocolError });
  const auth = hex('81210005000000200000000d0000000000000000000000000000000041757468206661696c7572652e'.replace('0005', '0000'));
  t.true(c.parse(auth, 0, reply) > 0);
  t.is(reply.status, 'error');
  t.is(reply.code, 0x20);
  t.true(reply.sasl);
});

test('meta: a base64 key puts the b flag among the flags (after the data length for ms)', (t) => {
  const c = new MetaCodec();
  const b64 = Buffer.from('a b').toString('base64');
  t.is(c.add('a b', Buffer.from('hi'), 10).toString(), `ms ${b64} 2 b T10 c ME\r\nhi\r\n`);
  t.is(c.casSet('a b', Buffer.from('hi'), 10, 7n).toString(), `ms ${b64} 2 b T10 c C7\r\nhi\r\n`);
  t.is(c.casDelete('a b', 7n).toString(), `md ${b64} b C7\r\n`);
});
