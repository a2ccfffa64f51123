/**
 * The classic text codec against frames recorded from memcached 1.6.18
 * (directly and through twemproxy 0.5.0, which passes these replies on
 * unchanged): requests are encoded byte for byte as recorded, recorded
 * replies parse to the right outcome for the request they answer, and a
 * reply cut at any byte is reported incomplete, never misread.
 */
import test from 'ava';
import { emptyReply, ProtocolError, type Op, type Reply } from '../../src/transport/codec.js';
import { PAST_EXPIRY, TextCodec, textKey } from '../../src/transport/text-codec.js';

const text = (s: string): Buffer => Buffer.from(s, 'latin1');

// Requests memlock sent, in this order, and memcached 1.6.18's replies to them
// on a fresh server: add k (new), add k (exists), gets k, gets nope, cas k
// with a wrong CAS, CAS-checked delete of a missing key, CAS-checked delete
// of k with its CAS, gets k (gone).
const c = new TextCodec();
const requests: Array<[Op, Buffer]> = [
  ['add', c.add('k', text('hi'), 10)],
  ['add', c.add('k', text('hi'), 10)],
  ['get', c.get('k')],
  ['get', c.get('nope')],
  ['set', c.casSet('k', text('xx'), 10, 999n)],
  ['delete', c.casDelete('nope', 1n)],
  ['delete', c.casDelete('k', 1n)],
  ['get', c.get('k')],
];
const recordedRequests =
  'add k 0 10 2\r\nhi\r\nadd k 0 10 2\r\nhi\r\ngets k\r\ngets nope\r\ncas k 0 10 2 999\r\nxx\r\n' +
  'cas nope 0 2592001 0 1\r\n\r\ncas k 0 2592001 0 1\r\n\r\ngets k\r\n';
const recordedReplies = text(
  'STORED\r\nNOT_STORED\r\nVALUE k 0 2 1\r\nhi\r\nEND\r\nEND\r\nEXISTS\r\nNOT_FOUND\r\nSTORED\r\nEND\r\n',
);
const expected = [
  { status: 'ok', cas: 0n, value: '' },
  { status: 'exists', cas: 0n, value: '' },
  { status: 'ok', cas: 1n, value: 'hi' },
  { status: 'not_found', cas: 0n, value: '' },
  { status: 'exists', cas: 0n, value: '' },
  { status: 'not_found', cas: 0n, value: '' },
  { status: 'ok', cas: 0n, value: '' },
  { status: 'not_found', cas: 0n, value: '' },
];

function parseAll(
  buf: Buffer,
  ops: readonly (Op | undefined)[],
): Array<Pick<Reply, 'status' | 'cas'> & { value: string }> {
  const reply = emptyReply();
  const out = [];
  let offset = 0;
  for (const op of ops) {
    const end = c.parse(buf, offset, reply, op);
    if (end === -1) throw new Error(`incomplete at ${offset}`);
    out.push({ status: reply.status, cas: reply.cas, value: reply.value.toString() });
    offset = end;
  }
  if (offset !== buf.length) throw new Error(`${buf.length - offset} bytes left`);
  return out;
}

test('text requests are encoded as recorded: add, gets, cas, and a CAS-checked delete as a cas with an expiry in the past', (t) => {
  t.is(Buffer.concat(requests.map(([, buf]) => buf)).toString('latin1'), recordedRequests);
  t.is(PAST_EXPIRY, 30 * 24 * 3600 + 1, 'above 30 days: an absolute unix time, one second past it');
  t.is(
    c.casSet('k', text('v'), 0, 18_446_744_073_709_551_615n).toString(),
    'cas k 0 0 1 18446744073709551615\r\nv\r\n',
  );
  t.is(c.saslPlain(), undefined, 'no SASL on the text protocol');
  t.is(c.name, 'text');
  t.false(c.writeReturnsCas, 'STORED carries no CAS: the client reads it back');
  const binaryValue = Buffer.from([0, 13, 10, 255]);
  t.deepEqual(c.add('k', binaryValue, 1), Buffer.concat([text('add k 0 1 4\r\n'), binaryValue, text('\r\n')]));
  t.is(c.get('memlock:héllo').toString(), 'gets memlock:héllo\r\n', 'UTF-8 keys go as they are');
});

test('recorded text replies parse to their outcomes for the requests they answer', (t) => {
  const ops = requests.map(([op]) => op);
  t.deepEqual(parseAll(recordedReplies, ops), expected);
  t.deepEqual(
    parseAll(
      recordedReplies,
      ops.map(() => undefined),
    ),
    expected,
    'the same without knowing the request',
  );
});

test('a text reply cut at any byte is incomplete, and whole again once the rest arrives', (t) => {
  const reply = emptyReply();
  let offset = 0;
  let count = 0;
  for (const [op] of requests) {
    const end = c.parse(recordedReplies, offset, reply, op);
    t.true(end > offset);
    for (let cut = offset; cut < end; cut++) {
      t.is(c.parse(recordedReplies.subarray(0, cut), offset, emptyReply(), op), -1, `cut at ${cut}`);
    }
    offset = end;
    count++;
  }
  t.is(count, 8);
  t.is(offset, recordedReplies.length);
});

test('a reply that cannot answer the request it is matched with is a protocol error', (t) => {
  const reply = emptyReply();
  const cases: Array<[string, Op]> = [
    ['STORED\r\n', 'get'],
    ['END\r\n', 'add'],
    ['END\r\n', 'set'],
    ['EXISTS\r\n', 'add'],
    ['NOT_FOUND\r\n', 'add'],
    ['NOT_FOUND\r\n', 'get'],
    ['VALUE k 0 2 1\r\nhi\r\nEND\r\n', 'add'],
    ['VALUE k 0 2 1\r\nhi\r\nEND\r\n', 'delete'],
    ['DELETED\r\n', 'delete'],
    ['TOUCHED\r\n', 'set'],
    ['15\r\n', 'get'],
  ];
  for (const [line, op] of cases) {
    t.throws(
      () => c.parse(text(line), 0, reply, op),
      { instanceOf: ProtocolError },
      `${JSON.stringify(line)} to ${op}`,
    );
  }
  t.throws(() => c.parse(text('END\r\n'), 0, reply, 'add'), {
    instanceOf: ProtocolError,
    message: 'unexpected text-protocol reply to add: END',
  });
  t.throws(() => c.parse(text('constructor\r\n'), 0, reply), {
    instanceOf: ProtocolError,
    message: 'unexpected text-protocol reply: constructor',
  });
  // A proxy may refuse a cas with NOT_STORED: not applied.
  t.is(c.parse(text('NOT_STORED\r\n'), 0, reply, 'set'), 12);
  t.is(reply.status, 'exists');
  t.is(c.parse(text('NOT_STORED\r\n'), 0, reply, 'delete'), 12);
  t.is(reply.status, 'exists');
});

test('text error replies: SERVER_ERROR may have been applied (a proxy lost memcached) and drops the connection; CLIENT_ERROR and ERROR are fatal, not applied', (t) => {
  const reply = emptyReply();
  // What twemproxy 0.5.0 sent for a forwarded add when memcached died before answering.
  t.is(c.parse(text('SERVER_ERROR Connection reset by peer\r\n'), 0, reply, 'add'), 39);
  t.like(reply, {
    status: 'error',
    mayHaveApplied: true,
    fatal: true,
    message: 'SERVER_ERROR Connection reset by peer',
  });
  // memcached's own, for a 2 MB value.
  t.is(c.parse(text('SERVER_ERROR object too large for cache\r\n'), 0, reply, 'get'), 41);
  t.like(reply, { status: 'error', mayHaveApplied: true, fatal: true });
  t.is(c.parse(text('CLIENT_ERROR bad command line format\r\n'), 0, reply, 'get'), 38);
  t.like(reply, {
    status: 'error',
    mayHaveApplied: false,
    fatal: true,
    message: 'CLIENT_ERROR bad command line format',
  });
  t.is(c.parse(text('STORED\r\nERROR\r\n'), 8, reply, 'set'), 15, 'the offset just past the line');
  t.like(reply, { status: 'error', mayHaveApplied: false, fatal: true, message: 'ERROR' });
  t.is(c.parse(text('ERROR unknown command\r\n'), 0, reply), 23);
  t.like(reply, { status: 'error', fatal: true });
  t.is(c.parse(text(`SERVER_ERROR ${'e'.repeat(300)}\r\n`), 0, reply), 315);
  t.is(reply.message.length, 200);
  t.throws(() => c.parse(text('ERRORS\r\n'), 0, reply), { instanceOf: ProtocolError });
  t.throws(() => c.parse(text('HD c1\r\n'), 0, reply, 'add'), { instanceOf: ProtocolError }, 'a meta reply');
});

test('text framing: CRLF checks, line length, and malformed VALUE lines', (t) => {
  const reply = emptyReply();
  const malformed = { instanceOf: ProtocolError, message: 'malformed text-protocol reply from memcached' };
  t.throws(() => c.parse(text('\n'), 0, reply), malformed, 'a bare LF');
  t.throws(() => c.parse(text('STORED\r\n\n'), 8, reply), malformed, 'a bare LF at the offset');
  t.throws(() => c.parse(text('STORED\n'), 0, reply), malformed, 'LF without CR');
  t.throws(() => c.parse(text('\r\n'), 0, reply), {
    instanceOf: ProtocolError,
    message: 'unexpected text-protocol reply: ',
  });
  t.is(c.parse(text('x'.repeat(8192)), 0, reply), -1, 'up to 8 KiB without a newline may still be a line');
  t.throws(() => c.parse(text('x'.repeat(8193)), 0, reply), {
    instanceOf: ProtocolError,
    message: 'text-protocol reply line too long',
  });
  t.is(c.parse(text(`${'y'.repeat(100)}${'x'.repeat(8192)}`), 100, reply), -1, 'measured from the offset');
  const noCas = { instanceOf: ProtocolError, message: /gets with CAS expected/ };
  t.throws(() => c.parse(text('VALUE k 0 2\r\nhi\r\nEND\r\n'), 0, reply, 'get'), noCas, 'a get reply without CAS');
  t.throws(() => c.parse(text('VALUE k 0 x 1\r\n'), 0, reply, 'get'), noCas);
  t.throws(() => c.parse(text('VALUE k 0 -1 1\r\n'), 0, reply, 'get'), noCas);
  t.throws(() => c.parse(text('VALUE k 0 1.5 1\r\n'), 0, reply, 'get'), noCas);
  t.throws(() => c.parse(text('VALUE k 0 2 1x\r\n'), 0, reply, 'get'), noCas);
  t.throws(() => c.parse(text('VALUE k 0 2 1 9\r\n'), 0, reply, 'get'), noCas);
  t.throws(() => c.parse(text('VALUE k 0 2 1\r\nhiX\n'), 0, reply, 'get'), {
    instanceOf: ProtocolError,
    message: 'text-protocol value not terminated by CRLF',
  });
  const notEnd = { instanceOf: ProtocolError, message: 'text-protocol value not followed by END' };
  t.throws(() => c.parse(text('VALUE k 0 2 1\r\nhi\r\nVALUE j 0 2 2\r\nho\r\nEND\r\n'), 0, reply, 'get'), notEnd);
  t.throws(() => c.parse(text('VALUE k 0 2 1\r\nhi\r\nEX'), 0, reply, 'get'), notEnd, 'wrong before it is complete');
  t.is(c.parse(text('VALUE k 0 2 1\r\nhi\r\nEN'), 0, reply, 'get'), -1, 'END on its way');
});

test('text parse: values with CRLF inside, empty values, big CAS, copies, and every reply field reset', (t) => {
  const reply = emptyReply();
  const data = text('a\r\nEND\r\nb');
  const frame = Buffer.concat([text(`VALUE k 7 ${data.length} 18446744073709551615\r\n`), data, text('\r\nEND\r\n')]);
  t.is(c.parse(frame, 0, reply, 'get'), frame.length);
  t.like(reply, { status: 'ok', cas: 18_446_744_073_709_551_615n });
  t.deepEqual(reply.value, data, 'the data block is taken by its length, not by its content');
  frame.fill(0x58, frame.indexOf('a'));
  t.deepEqual(reply.value, data, 'the value is a copy, not a view of the socket buffer');
  t.is(c.parse(text('xxVALUE k 0 0 4\r\n\r\nEND\r\n'), 2, reply, 'get'), 24);
  t.like(reply, { status: 'ok', cas: 4n });
  t.is(reply.value.length, 0);
  Object.assign(reply, { fatal: true, sasl: true, mayHaveApplied: true, code: 5, message: 'old', seq: 3, cas: 9n });
  t.is(c.parse(text('STORED\r\n'), 0, reply, 'add'), 8);
  t.deepEqual(reply, { ...emptyReply(), status: 'ok' });
  reply.value = text('old');
  c.parse(text('END\r\n'), 0, reply, 'get');
  t.deepEqual(reply, { ...emptyReply(), status: 'not_found' });
});

test('text keys and expiries: whitespace, control bytes, more than 250 bytes and a negative expiry are RangeErrors before anything is sent', (t) => {
  t.is(textKey('memlock:plain'), 'memlock:plain');
  t.is(textKey('a!b~'), 'a!b~');
  for (const key of ['a b', 'a\tb', 'a\r\nb', 'a\u0000b', 'a\u007fb']) {
    t.throws(
      () => c.get(key),
      { instanceOf: RangeError, message: /whitespace or control characters/ },
      JSON.stringify(key),
    );
  }
  t.notThrows(() => textKey('k'.repeat(250)));
  t.throws(() => textKey('k'.repeat(251)), {
    instanceOf: RangeError,
    message: 'memcache key is longer than 250 bytes',
  });
  t.throws(() => textKey('é'.repeat(126)), { instanceOf: RangeError }, '252 bytes in UTF-8');
  t.throws(() => c.add('k', text('v'), -1), { instanceOf: RangeError, message: /expiry.*-1/ });
  t.throws(() => c.casSet('k', text('v'), 1.5, 1n), { instanceOf: RangeError, message: /expiry/ });
  t.throws(() => c.casDelete('a b', 1n), { instanceOf: RangeError });
});
