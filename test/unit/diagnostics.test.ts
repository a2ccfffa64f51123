/**
 * diagnostics.ts without a server: typed `subscribe`, the NODE_DEBUG line
 * format (`formatEvent`) and the likely-cause hints (`likelyCause`). The
 * NODE_DEBUG output of a real process is in test/integration/diagnostics.test.ts.
 */
import test from 'ava';
import dc from 'node:diagnostics_channel';
import { LockLostError, MemcacheUnavailableError, channels, subscribe } from '../../src/index.js';
import { formatEvent, likelyCause } from '../../src/diagnostics.js';

const withCode = (message: string, code: string, cause?: unknown): Error =>
  Object.assign(new Error(message, { cause }), { code });

/** Runs `fn` with MEMCACHE_SERVERS set to `value` (undefined: unset), restoring it after. */
function withServersEnv<T>(value: string | undefined, fn: () => T): T {
  const saved = process.env.MEMCACHE_SERVERS;
  if (value === undefined) delete process.env.MEMCACHE_SERVERS;
  else process.env.MEMCACHE_SERVERS = value;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
    else process.env.MEMCACHE_SERVERS = saved;
  }
}

test.serial(
  'subscribe: typed delivery on the named channel until the returned function unsubscribes (idempotent)',
  (t) => {
    const seen: Array<[unknown, string]> = [];
    const fn = (message: unknown, name: string): void => {
      seen.push([message, name]);
    };
    const stop = subscribe('memlock:released', fn);
    t.true(channels.released.hasSubscribers);
    t.false(channels.lost.hasSubscribers, 'only the named channel');
    channels.released.publish({ key: 'k', clientId: 'A', heldMs: 1 });
    stop();
    t.false(channels.released.hasSubscribers);
    channels.released.publish({ key: 'k2', clientId: 'A', heldMs: 1 });
    t.deepEqual(seen, [[{ key: 'k', clientId: 'A', heldMs: 1 }, 'memlock:released']]);
    // The same function subscribed again (here, or by other code): a second
    // stop() of the first subscription must not take it away.
    const again = subscribe('memlock:released', fn);
    stop();
    t.true(channels.released.hasSubscribers);
    channels.released.publish({ key: 'k3', clientId: 'A', heldMs: 1 });
    t.is(seen.length, 2, 'still delivered');
    again();
    t.false(channels.released.hasSubscribers);
  },
);

test('subscribe: unknown names and non-functions are TypeErrors naming the argument', (t) => {
  t.throws(() => subscribe('memlock:nope' as 'memlock:lost', () => {}), {
    instanceOf: TypeError,
    message:
      'Expected `name` to be one of memlock:acquired, memlock:refused, memlock:stolen, memlock:lost, memlock:released, memlock:release-failed, memlock:heartbeat-error, memlock:fail-open, got "memlock:nope"',
  });
  t.throws(() => subscribe(5 as unknown as 'memlock:lost', () => {}), {
    instanceOf: TypeError,
    message: /, got number$/,
  });
  t.throws(() => subscribe('memlock:lost', 'nope' as unknown as () => void), {
    instanceOf: TypeError,
    message: 'Expected `fn` to be a function, got string',
  });
  t.false(dc.hasSubscribers('memlock:nope'), 'nothing subscribed under the unknown name');
  t.false(channels.lost.hasSubscribers);
});

test('formatEvent: name without memlock:, fields in order, strings inspected, numbers to 3 decimals, dates ISO', (t) => {
  t.is(
    formatEvent('memlock:acquired', {
      key: 'k',
      clientId: "it's",
      how: 'added',
      durationMs: 1.23456,
      at: new Date(Date.UTC(2026, 0, 2, 3, 4, 5)),
      n: 2,
      flag: true,
      none: undefined,
    }),
    "acquired key='k' clientId=\"it's\" how='added' durationMs=1.235 at=2026-01-02T03:04:05.000Z n=2 flag=true none=undefined",
  );
  const long = Array.from({ length: 40 }, (_, i) => i * 1000);
  t.is(
    formatEvent('memlock:x', { long }),
    `x long=[ ${long.join(', ')} ]`,
    'one line, however long (inspect would break it at 80 columns)',
  );
  t.is(formatEvent('memlock:x', { s: 'a\nb' }), "x s='a\\nb'", 'a newline in a string stays escaped');
  t.is(formatEvent('other:memlock:x', {}), 'other:memlock:x', 'only a leading memlock: is cut');
  t.is(formatEvent('memlock:released', { heldMs: 0.0004 }), 'released heldMs=0');
});

test('formatEvent: the error goes last with its cause chain (code, else name; three causes at most) and the likely cause', (t) => {
  const chain = withCode('c1', 'E1', withCode('c2', 'E2', new TypeError('c3', { cause: withCode('c4', 'E4') })));
  const error = new MemcacheUnavailableError('down', { cause: chain });
  t.is(
    formatEvent('memlock:heartbeat-error', { error, key: 'k', server: 'cache-1:11211', failures: 3 }),
    "heartbeat-error key='k' server='cache-1:11211' failures=3 error='MemcacheUnavailableError: down <- E1: c1 <- E2: c2 <- TypeError: c3'" +
      ' (likely cause: cache-1:11211 is down, unreachable or slower than timeoutMs.)',
  );
  t.is(
    formatEvent('memlock:lost', { kind: 'gone', error: new LockLostError('k', 'gone') }),
    "lost kind='gone' error='LockLostError: Lock \"k\" was lost: the entry is gone (evicted, flushed or deleted)' (likely cause: the entry was evicted, flushed, expired or deleted (memcached restart or memory pressure?))",
  );
  t.is(
    formatEvent('memlock:release-failed', { error: 'odd' }),
    "release-failed error='odd'",
    'a non-Error is printed as a string, no cause',
  );
  t.is(
    formatEvent('memlock:release-failed', { error: new Error('plain') }),
    "release-failed error='Error: plain'",
    'no likely cause: nothing appended',
  );
  t.is(
    formatEvent('memlock:release-failed', { error: new Error('x', { cause: 'not an Error' }) }),
    "release-failed error='Error: x'",
    'a non-Error cause ends the chain',
  );
  // A server field that is not a string is printed, but not used as the server.
  t.is(
    formatEvent('memlock:lost', { server: 5, error: new MemcacheUnavailableError('t', { server: 'cache-2:1' }) }),
    "lost server=5 error='MemcacheUnavailableError: t' (likely cause: cache-2:1 is down, unreachable or slower than timeoutMs.)",
  );
});

test('likelyCause: the lock-level kinds come first, in order (deadline, gone, taken)', (t) => {
  const refused = withCode('refused', 'ECONNREFUSED');
  const lost = (kind: 'deadline' | 'gone' | 'taken' | 'unreachable', cause?: unknown): LockLostError =>
    new LockLostError('k', kind, { cause });
  t.regex(
    likelyCause(lost('deadline', refused), 'h:1') ?? '',
    /^the event loop was blocked \(or the process paused\) longer than the lease allows; move synchronous work off the loop or raise leaseMs$/,
  );
  t.is(
    likelyCause(lost('gone', refused)),
    'the entry was evicted, flushed, expired or deleted (memcached restart or memory pressure?)',
  );
  t.is(
    likelyCause(lost('taken', refused)),
    'another acquisition took the entry (same clientId elsewhere, or stealAfterMs)',
  );
  t.is(likelyCause(lost('deadline', lost('gone'))), likelyCause(lost('deadline')), 'deadline over gone');
  t.is(likelyCause(lost('gone', lost('taken'))), likelyCause(lost('gone')), 'gone over taken');
  t.is(
    likelyCause(new Error('x', { cause: lost('taken') })),
    likelyCause(lost('taken')),
    'a kind found down the cause chain',
  );
  withServersEnv('cache-1:11211', () => {
    t.is(likelyCause(lost('unreachable')), 'the memcache server is down, unreachable or slower than timeoutMs.');
  });
});

test('likelyCause: system error codes down the cause chain, each with its message and priority', (t) => {
  withServersEnv('cache-1:11211', () => {
    const at = (error: unknown): string | undefined => likelyCause(error, 'cache-1:11211');
    t.is(at(withCode('x', 'ECONNREFUSED')), 'nothing accepts connections at cache-1:11211.');
    t.is(at(withCode('x', 'ENOTFOUND')), 'the host name of cache-1:11211 does not resolve');
    t.is(at(withCode('x', 'EAI_AGAIN')), 'the host name of cache-1:11211 does not resolve');
    t.is(
      at(new Error('SASL authentication failed')),
      'SASL authentication failed: check username/password (MEMCACHE_USERNAME / MEMCACHE_PASSWORD)',
    );
    t.is(at(new Error('Auth error')), at(new Error('sasl')), 'auth or sasl, any case');
    for (const code of ['ETIMEDOUT', 'ECONNRESET', 'EPIPE', 'ERR_MEMLOCK_UNAVAILABLE']) {
      t.is(at(withCode('x', code)), 'cache-1:11211 is down, unreachable or slower than timeoutMs.', code);
    }
    t.is(at(withCode('x', 'EOTHER')), undefined);
    t.is(at(Object.assign(new Error('x'), { code: 5, kind: 5 })), undefined, 'non-string code and kind are ignored');
    t.is(at('ECONNREFUSED'), undefined, 'not an Error');
    t.is(at(undefined), undefined);
    // Priority: refused > not found > SASL > timeouts.
    t.is(
      at(withCode('x', 'ETIMEDOUT', withCode('y', 'ECONNREFUSED'))),
      'nothing accepts connections at cache-1:11211.',
    );
    t.is(at(withCode('x', 'ETIMEDOUT', withCode('y', 'ENOTFOUND'))), 'the host name of cache-1:11211 does not resolve');
    t.is(
      at(withCode('x', 'ENOTFOUND', withCode('y', 'ECONNREFUSED'))),
      'nothing accepts connections at cache-1:11211.',
    );
    t.is(at(withCode('sasl', 'ETIMEDOUT')), at(new Error('sasl')), 'SASL over a timeout');
    t.is(
      at(withCode('x', 'ENOTFOUND', new Error('sasl'))),
      'the host name of cache-1:11211 does not resolve',
      'not found over SASL',
    );
  });
});

test('likelyCause: looks five errors deep, no further', (t) => {
  withServersEnv('cache-1:11211', () => {
    const nested = (depth: number): Error => {
      let error: Error = withCode('bottom', 'ECONNREFUSED');
      for (let i = 0; i < depth; i++) error = new Error(`level ${i}`, { cause: error });
      return error;
    };
    t.truthy(likelyCause(nested(4), 'h:1'), 'the fifth error is read');
    t.is(likelyCause(nested(5), 'h:1'), undefined, 'the sixth is not');
  });
});

test('likelyCause: the server comes from the argument, else from the first error that names one', (t) => {
  withServersEnv('x:1', () => {
    const inner = new MemcacheUnavailableError('inner', { server: 'inner:1', cause: withCode('x', 'ECONNREFUSED') });
    const outer = new MemcacheUnavailableError('outer', { server: 'outer:1', cause: inner });
    t.is(likelyCause(outer), 'nothing accepts connections at outer:1.');
    t.is(likelyCause(new Error('wrapped', { cause: inner })), 'nothing accepts connections at inner:1.');
    t.is(likelyCause(outer, 'arg:1'), 'nothing accepts connections at arg:1.');
    t.is(
      likelyCause(Object.assign(withCode('x', 'ECONNREFUSED'), { server: 7 })),
      'nothing accepts connections at the memcache server.',
      'a non-string server is ignored',
    );
  });
});

test('likelyCause: MEMCACHE_SERVERS unset and the default server (or none) named: the hint says so', (t) => {
  const hint =
    ' MEMCACHE_SERVERS is unset, so the default instance (and any Memlock without `servers`) uses localhost:11211: set MEMCACHE_SERVERS or pass `servers`.';
  const refused = withCode('x', 'ECONNREFUSED');
  const timeout = withCode('x', 'ETIMEDOUT');
  withServersEnv(undefined, () => {
    for (const server of ['localhost:11211', '127.0.0.1:11211', '::1:11211']) {
      t.is(likelyCause(refused, server), `nothing accepts connections at ${server}.${hint}`, server);
    }
    t.is(
      likelyCause(timeout, 'localhost:11211'),
      `localhost:11211 is down, unreachable or slower than timeoutMs.${hint}`,
    );
    t.is(likelyCause(refused), `nothing accepts connections at the memcache server.${hint}`, 'no server known');
    for (const server of ['cache-1:11211', 'localhost:11212', 'localhost:112110', 'xlocalhost:11211']) {
      t.is(likelyCause(refused, server), `nothing accepts connections at ${server}.`, server);
    }
    t.is(
      likelyCause(withCode('x', 'ENOTFOUND'), 'localhost:11211'),
      'the host name of localhost:11211 does not resolve',
      'only refusals and timeouts get the hint',
    );
  });
  withServersEnv('localhost:11211', () => {
    t.is(likelyCause(refused, 'localhost:11211'), 'nothing accepts connections at localhost:11211.', 'set: no hint');
  });
});

test('likelyCause: TLS failures get TLS hints (untrusted CA, expired, other host name, no TLS on the port, plain client on a TLS port)', (t) => {
  withServersEnv('cache-1:11211', () => {
    const at = (error: unknown, style?: 'options' | 'flags'): string | undefined =>
      likelyCause(error, 'cache-1:11211', { style });
    for (const code of [
      'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
      'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
      'SELF_SIGNED_CERT_IN_CHAIN',
      'DEPTH_ZERO_SELF_SIGNED_CERT',
    ]) {
      t.is(
        at(withCode('x', code)),
        'the TLS certificate of cache-1:11211 is not signed by a CA this process trusts: pass its CA as `tls: { ca }`, or start node with NODE_EXTRA_CA_CERTS=FILE',
        code,
      );
      t.is(
        at(withCode('x', code), 'flags'),
        'the TLS certificate of cache-1:11211 is not signed by a CA this process trusts: pass its CA with --ca FILE, or set NODE_EXTRA_CA_CERTS=FILE',
        code,
      );
    }
    t.regex(at(withCode('x', 'CERT_HAS_EXPIRED')) ?? '', /has expired or is not valid yet/);
    t.is(
      at(withCode('x', 'ERR_TLS_CERT_ALTNAME_INVALID')),
      'the TLS certificate of cache-1:11211 is for other host names: connect by a name it lists, or set `tls: { servername }`',
    );
    t.is(
      at(withCode('x', 'ERR_TLS_CERT_ALTNAME_INVALID'), 'flags'),
      'the TLS certificate of cache-1:11211 is for other host names: connect by a name it lists (--servers NAME:PORT)',
    );
    const wrongVersion = new MemcacheUnavailableError('memcache get failed (cache-1:11211, binary+tls): x', {
      cause: withCode('ssl3_get_record:wrong version number', 'ERR_SSL_WRONG_VERSION_NUMBER'),
    });
    t.is(at(wrongVersion), 'cache-1:11211 does not speak TLS on that port: drop `tls`, or use its TLS port');
    t.is(at(wrongVersion, 'flags'), 'cache-1:11211 does not speak TLS on that port: drop --tls, or use its TLS port');
    // A reset on a plain connection: memcached -Z resets one that does not start with a TLS handshake.
    const reset = (label: string): Error =>
      new MemcacheUnavailableError(`memcache connection failed (cache-1:11211, ${label}): read ECONNRESET`, {
        cause: withCode('read ECONNRESET', 'ECONNRESET'),
      });
    for (const label of ['binary', 'meta', 'text']) {
      t.is(
        at(reset(label), 'flags'),
        'cache-1:11211 reset the connection: if it speaks TLS (memcached -Z), pass --tls; else it is down or restarting.',
        label,
      );
    }
    t.regex(at(reset('binary')) ?? '', /if it speaks TLS \(memcached -Z\), set `tls: true`/);
    t.is(at(reset('binary+tls')), 'cache-1:11211 is down, unreachable or slower than timeoutMs.', 'TLS was used');
    t.is(at(withCode('x', 'ECONNRESET')), 'cache-1:11211 is down, unreachable or slower than timeoutMs.', 'unknown');
  });
});

test('likelyCause for the memlock command names its flags: --servers, not `servers`', (t) => {
  const refused = withCode('x', 'ECONNREFUSED');
  withServersEnv(undefined, () => {
    t.is(
      likelyCause(refused, 'localhost:11211', { style: 'flags' }),
      'nothing accepts connections at localhost:11211. Neither --servers nor MEMCACHE_SERVERS is set, so memlock uses localhost:11211: pass --servers or set MEMCACHE_SERVERS.',
    );
    t.is(
      likelyCause(refused, 'localhost:11211', { style: 'flags', serversGiven: true }),
      'nothing accepts connections at localhost:11211.',
      '--servers localhost:11211 given: no hint about the default',
    );
  });
});
