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
  t.is(
    c.add('k', Buffer.from('hi'), 10, 1).toString('hex'),
    '80020001080000000000000b000000010000000000000000000000000000000a6b6869',
  );
  t.is(c.get('k', 3).toString('hex'), '8000000100000000000000010000000300000000000000006b');
  t.is(
    c.casSet('k', Buffer.from('xx'), 10, 999n, 5).toString('hex'),
    '80010001080000000000000b0000000500000000000003e7000000000000000a6b7878',
  );
  t.is(c.casDelete('nope', 1n, 6).toString('hex'), '8004000400000000000000040000000600000000000000016e6f7065');
  // SASL_AUTH (0x21), key 'PLAIN', value '\0u\0p': body 9 bytes.
  t.is(
    c.saslPlain('u', 'p').toString('hex'),
    '802100050000000000000009000000000000000000000000' + Buffer.from('PLAIN\0u\0p').toString('hex'),
  );
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
  '810200000000000000000000000000010000000000000001' +
    '810200000000000200000014000000020000000000000000446174612065786973747320666f72206b65792e' +
    '8100000004000000000000060000000300000000000000010000000068 69'.replace(' ', '') +
    '8100000000000001000000090000000400000000000000004e6f7420666f756e64' +
    '810100000000000200000014000000050000000000000000446174612065786973747320666f72206b65792e' +
    '8104000000000001000000090000000600000000000000004e6f7420666f756e64',
);

// Replies memcached 1.6.18 sent to the equivalent meta requests, plus an error line.
const metaReplies = text('HD c1\r\nNS c0\r\nVA 2 c1\r\nhi\r\nEN\r\nEX c0\r\nNF\r\n');

interface Parsed {
  status: Reply['status'];
  cas: bigint;
  value: string;
  seq: number;
}

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
  t.deepEqual(
    parsed.map(({ status, value }) => ({ status, value })),
    expected.map(({ status, value }) => ({ status, value })),
  );
  t.is(parsed[0]?.cas, 1n);
  t.is(parsed[2]?.cas, 1n);
  t.deepEqual(
    parsed.map((p) => p.seq),
    [1, 2, 3, 4, 5, 6],
  );
});

test('recorded meta replies parse to their outcomes', (t) => {
  const parsed = parseAll(new MetaCodec(), metaReplies);
  t.deepEqual(
    parsed.map(({ status, cas, value }) => ({ status, cas, value })),
    expected,
  );
  t.true(parsed.every((p) => p.seq === -1));
});

for (const [name, codec, frames] of [
  ['binary', new BinaryCodec(), binaryReplies],
  ['meta', new MetaCodec(), metaReplies],
] as const) {
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
  t.is(c.parse(text('CLIENT_ERROR bad command line format\r\n'), 0, reply), 38);
  t.true(reply.fatal);
  t.is(c.parse(text('HD\r\nERROR\r\n'), 4, reply), 11, 'the offset just past the line');
  t.true(reply.fatal);
  t.throws(() => c.parse(text('STORED\r\n'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('VA 2 c1\r\nhiXY'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('x'.repeat(9000)), 0, reply), { instanceOf: ProtocolError });
});

test('binary: bytes that are not a response throw; an auth error is an error reply', (t) => {
  const c = new BinaryCodec();
  const reply = emptyReply();
  t.throws(() => c.parse(text('HD c1\r\n'.padEnd(24, ' ')), 0, reply), { instanceOf: ProtocolError });
  const auth = hex(
    '81210005000000200000000d0000000000000000000000000000000041757468206661696c7572652e'.replace('0005', '0000'),
  );
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

/** A binary response: opcode, status, cas, seq, and optional extras/key/value. */
function binaryResponse(o: {
  opcode?: number;
  status?: number;
  cas?: bigint;
  seq?: number;
  extras?: Buffer;
  key?: Buffer;
  value?: Buffer;
}): Buffer {
  const extras = o.extras ?? Buffer.alloc(0);
  const key = o.key ?? Buffer.alloc(0);
  const value = o.value ?? Buffer.alloc(0);
  const head = Buffer.alloc(24);
  head[0] = 0x81;
  head[1] = o.opcode ?? 0x00;
  head.writeUInt16BE(key.length, 2);
  head[4] = extras.length;
  head.writeUInt16BE(o.status ?? 0, 6);
  head.writeUInt32BE(extras.length + key.length + value.length, 8);
  head.writeUInt32BE(o.seq ?? 0, 12);
  head.writeBigUInt64BE(o.cas ?? 0n, 16);
  return Buffer.concat([head, extras, key, value]);
}

test('emptyReply: a fresh ok reply with nothing in it; ProtocolError is named', (t) => {
  t.deepEqual(emptyReply(), {
    status: 'ok',
    cas: 0n,
    value: Buffer.alloc(0),
    seq: -1,
    message: '',
    code: 0,
    fatal: false,
    sasl: false,
    mayHaveApplied: false,
  });
  t.not(emptyReply(), emptyReply());
  t.is(new ProtocolError('x').name, 'ProtocolError');
});

test('binary parse: the value starts after extras and key; every field of the reply is set (none left from an earlier reply)', (t) => {
  const c = new BinaryCodec();
  const reply = emptyReply();
  // A GET hit carries 4 bytes of flags as extras (and, for GETK, the key).
  const hit = binaryResponse({
    opcode: 0x00,
    cas: 7n,
    seq: 9,
    extras: hex('00000000'),
    key: text('kk'),
    value: text('value'),
  });
  t.is(c.parse(Buffer.concat([text('junk'), hit]), 4, reply), 4 + hit.length);
  t.like(reply, { status: 'ok', cas: 7n, seq: 9, sasl: false, fatal: false, code: 0, message: '' });
  t.is(reply.value.toString(), 'value');
  // The next reply, an error with a message, must overwrite every field.
  Object.assign(reply, { fatal: true, sasl: true, mayHaveApplied: true });
  const error = binaryResponse({ opcode: 0x01, status: 0x82, seq: 10, value: text('Out of memory') });
  c.parse(error, 0, reply);
  t.like(reply, {
    status: 'error',
    code: 0x82,
    message: 'Out of memory',
    fatal: false,
    sasl: false,
    mayHaveApplied: false,
    cas: 0n,
    seq: 10,
  });
  t.is(reply.value.length, 0, 'an error carries no value');
  c.parse(binaryResponse({ status: 0x83 }), 0, reply);
  t.is(reply.message, 'status 0x83', 'no text: the status');
  c.parse(binaryResponse({ status: 0x85, value: text('x'.repeat(300)) }), 0, reply);
  t.is(reply.message, 'x'.repeat(200), 'long texts are cut at 200');
  c.parse(binaryResponse({ opcode: 0x21, status: 0x20 }), 0, reply);
  t.like(reply, { status: 'error', code: 0x20, message: 'authentication failed (status 0x20)', sasl: true });
  c.parse(binaryResponse({ opcode: 0x21, status: 0x20, value: text('Auth failure.') }), 0, reply);
  t.is(reply.message, 'authentication failed (status 0x20): Auth failure.');
  c.parse(binaryResponse({ status: 0x01, value: text('Not found') }), 0, reply);
  t.like(reply, { status: 'not_found', code: 0, message: '' });
  const empty = binaryResponse({ status: 0x00, extras: hex('00000000') });
  c.parse(empty, 0, reply);
  t.is(reply.value.length, 0, 'extras only: no value');
  const copied = binaryResponse({ value: text('abc') });
  c.parse(copied, 0, reply);
  copied.write('XYZ', 24);
  t.is(reply.value.toString(), 'abc', 'the value is a copy, not a view of the socket buffer');
});

test('binary casSet: a renewal of the same value reuses its request with a new CAS, seq and TTL; another value or key length gets a new one', (t) => {
  const c = new BinaryCodec();
  const value = Buffer.from('v1');
  const first = Buffer.from(c.casSet('key', value, 10, 5n, 1));
  const again = c.casSet('key', value, 20, 6n, 2);
  t.is(again.readUInt32BE(12), 2);
  t.is(again.readBigUInt64BE(16), 6n);
  t.is(again.readUInt32BE(28), 20);
  t.deepEqual(again.subarray(32), first.subarray(32), 'same key and value');
  const longer = c.casSet('key2', value, 20, 6n, 3);
  t.is(longer.subarray(32, 36).toString(), 'key2', 'a different key length: a new request');
  t.is(longer.length, 32 + 4 + 2);
  const other = c.casSet('key', Buffer.from('v2'), 20, 6n, 4);
  t.is(other.subarray(35).toString(), 'v2', 'another value: a new request');
  t.is(c.casSet('key', value, 30, 7n, 5).subarray(35).toString(), 'v1');
});

test('meta parse: cas and size fields, CRLF checks, and every reply field reset', (t) => {
  const c = new MetaCodec();
  const reply = emptyReply();
  t.is(c.parse(text('HD\r\n'), 0, reply), 4);
  t.is(reply.cas, 0n, 'no c flag: CAS 0');
  t.is(c.parse(text('HD c12 t5\r\n'), 0, reply), 11);
  t.is(reply.cas, 12n, 'c flag followed by others');
  t.is(c.parse(text('xxHD c3\r\n'), 2, reply), 9);
  t.is(reply.cas, 3n, 'parsed from the offset');
  t.is(c.parse(text('VA 2\r\nhi\r\n'), 0, reply), 10, 'a value without flags');
  t.is(reply.value.toString(), 'hi');
  t.is(c.parse(text('VA 0 c4\r\n\r\n'), 0, reply), 11);
  t.is(reply.value.length, 0);
  t.is(reply.cas, 4n);
  const chunk = text('VA 3 c1\r\nabc\r\n');
  c.parse(chunk, 0, reply);
  chunk.write('XYZ', 9);
  t.is(reply.value.toString(), 'abc', 'the value is a copy');
  Object.assign(reply, { fatal: true, sasl: true, mayHaveApplied: true, code: 5, message: 'old', seq: 3 });
  c.parse(text('EN\r\n'), 0, reply);
  t.like(reply, {
    status: 'not_found',
    fatal: false,
    sasl: false,
    mayHaveApplied: false,
    code: 0,
    message: '',
    seq: -1,
    cas: 0n,
  });
  t.is(reply.value.length, 0);
  for (const [line, status] of [
    ['NS', 'exists'],
    ['EX', 'exists'],
    ['NF', 'not_found'],
  ] as const) {
    t.is(c.parse(text(`${line}\r\n`), 0, reply), 4);
    t.is(reply.status, status);
  }
  t.throws(
    () => c.parse(text('\n'), 0, reply),
    { instanceOf: ProtocolError, message: 'malformed meta-protocol reply from memcached' },
    'a bare LF',
  );
  t.throws(
    () => c.parse(text('HD\r\n\n'), 4, reply),
    { instanceOf: ProtocolError, message: 'malformed meta-protocol reply from memcached' },
    'a bare LF at the offset',
  );
  t.throws(
    () => c.parse(text('\r\n'), 0, reply),
    { instanceOf: ProtocolError, message: 'unexpected meta-protocol reply: ' },
    'an empty line',
  );
  t.throws(
    () => c.parse(text('HD\n'), 0, reply),
    { instanceOf: ProtocolError, message: 'malformed meta-protocol reply from memcached' },
    'LF without CR',
  );
  t.throws(() => c.parse(text('VA x c1\r\n'), 0, reply), {
    instanceOf: ProtocolError,
    message: 'malformed meta-protocol reply: VA x c1',
  });
  t.throws(() => c.parse(text('VA -1\r\n'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('VA 2\r\nhi\rX'), 0, reply), {
    instanceOf: ProtocolError,
    message: 'meta-protocol value not terminated by CRLF',
  });
  t.throws(() => c.parse(text('VA 2\r\nhiX\n'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('ZZ top\r\n'), 0, reply), {
    instanceOf: ProtocolError,
    message: 'unexpected meta-protocol reply: ZZ top',
  });
  t.is(c.parse(text(`SERVER_ERROR ${'e'.repeat(300)}\r\n`), 0, reply), 315);
  t.is(reply.message.length, 200);
  t.is(c.parse(text('x'.repeat(8192)), 0, reply), -1, 'up to 8 KiB without a newline may still be a line');
  t.throws(() => c.parse(text('x'.repeat(8193)), 0, reply), {
    instanceOf: ProtocolError,
    message: 'meta-protocol reply line too long',
  });
  t.is(c.parse(text(`${'y'.repeat(100)}${'x'.repeat(8192)}`), 100, reply), -1, 'measured from the offset');
});

test('meta keys: base64 up to 250 bytes, longer is a RangeError naming the limit', (t) => {
  // 187 bytes -> 252 base64 chars; 186 -> 248.
  t.notThrows(() => wireKey(' '.repeat(186)));
  t.throws(() => wireKey(' '.repeat(187)), {
    instanceOf: RangeError,
    message: 'memcache key needs base64 for the meta protocol and is then longer than 250 bytes',
  });
  t.is(wireKey('a\u007fb'), `${Buffer.from('a\u007fb').toString('base64')} b`, 'DEL is unsafe too');
  t.is(wireKey('a!b~'), 'a!b~');
});
