/**
 * TLS against a real `memcached -Z` with a throwaway CA (see helpers/tls.ts):
 * locks work over TLS on both protocols; a wrong CA or a wrong host name
 * fails with MemcacheUnavailableError whose cause is the TLS error, before
 * the operation deadline, and nothing is sent. The CLI's `--tls` trusts a
 * private CA through NODE_EXTRA_CA_CERTS, as the README says.
 * the operation deadline, and nothing is sent.
 * The `memlock` command: `--ca`, and a hint per TLS failure.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import path from 'node:path';
import {
  Memlock,
  MemcacheLockClient,
  MemcacheUnavailableError,
  LockNotAcquiredError,
  type ProtocolName,
} from '../../src/index.js';
import { tlsFor } from '../../src/transport/servers.js';
import { makePki, startTlsMemcached, type TestPki, type TlsMemcached } from '../helpers/tls.js';
import { failOnUnhandled } from '../helpers/unhandled.js';
import { root } from '../helpers/package.js';
import { startMemcached } from '../helpers/memcached.js';
import { writeFileSync } from 'node:fs';

failOnUnhandled(test);

let pki: TestPki;
let server: TlsMemcached;
test.before(async () => {
  pki = await makePki();
  server = await startTlsMemcached(pki);
});
test.after.always(async () => {
  await server?.stop();
  pki?.remove();
});

for (const protocol of ['binary', 'meta'] as ProtocolName[]) {
  test.serial(`${protocol} over TLS: lock, refuse, renew, release`, async (t) => {
    const prefix = `tls-${protocol}:`;
    const options = { servers: server.address, tls: { ca: pki.ca }, protocol, prefix, leaseMs: 2000, heartbeatMs: 200 };
    const a = new Memlock(options);
    const b = new Memlock(options);
    t.teardown(async () => {
      await a.close();
      await b.close();
    });
    await a.tryWithLock('k', 'A', async (signal) => {
      const first = await server.raw.get(`${prefix}k`);
      t.regex(first?.value.toString() ?? '', /:A$/, 'the entry is on the server (read over the plain listener)');
      const refused = await t.throwsAsync(
        b.tryWithLock('k', 'B', () => 1),
        { instanceOf: LockNotAcquiredError },
      );
      t.is(refused?.holder, 'A');
      // Longer than the whole lease: only renewals over TLS keep the entry.
      await new Promise((resolve) => setTimeout(resolve, 2500));
      t.false(signal.aborted);
      const later = await server.raw.get(`${prefix}k`);
      t.is(later?.value.toString(), first?.value.toString());
      t.not(later?.cas, first?.cas, 'renewed');
    });
    t.is(await server.raw.get(`${prefix}k`), null, 'released');
    t.is(await b.tryWithLock('k', 'B', () => 'after release'), 'after release');
  });
}

const timeoutMs = 3000;

async function failsWithTlsError(t: import('ava').ExecutionContext, tls: object, code: RegExp): Promise<void> {
  const m = new Memlock({ servers: server.address, tls, prefix: 'tls-bad:', timeoutMs });
  t.teardown(() => m.close());
  let called = false;
  const started = performance.now();
  const error = await t.throwsAsync(
    m.tryWithLock('k', 'A', () => {
      called = true;
    }),
    { instanceOf: MemcacheUnavailableError },
  );
  const elapsed = performance.now() - started;
  t.false(called);
  t.true(elapsed < timeoutMs, `failed after ${elapsed.toFixed(0)} ms, before the ${timeoutMs} ms deadline`);
  const cause = error?.cause as { code?: string } | undefined;
  t.regex(cause?.code ?? '', code, `cause: ${String(cause)}`);
  t.false(error?.mayHaveApplied, 'nothing was sent before the handshake failed');
  t.regex(error?.message ?? '', /binary\+tls/, 'the error says TLS was used');
  t.is(error?.server, server.address);
  t.is(await server.raw.get('tls-bad:k'), null);
}

test.serial('a certificate from an unknown CA fails with the TLS error as cause', async (t) => {
  await failsWithTlsError(t, { ca: pki.otherCa }, /CERT|SIGNATURE|ISSUER/);
});

test.serial('tls: true uses the system CAs, which do not know the test CA', async (t) => {
  await failsWithTlsError(t, true as unknown as object, /CERT|SIGNATURE|ISSUER/);
});

test.serial('a certificate for another host name fails with the TLS error as cause', async (t) => {
  await failsWithTlsError(t, { ca: pki.ca, servername: 'not-this-host.example' }, /ERR_TLS_CERT_ALTNAME_INVALID/);
});

test.serial('the host name is the default servername: localhost matches the certificate', async (t) => {
  const c = new MemcacheLockClient({
    servers: [`localhost:${server.port}`],
    tls: { ca: pki.ca },
    protocol: 'meta',
    timeoutMs,
  });
  t.teardown(() => c.close());
  t.is((await c.add('tls-sni', Buffer.from('v'), 10)).status, 'ok');
  t.deepEqual(tlsFor('localhost', true), { servername: 'localhost' });
  t.deepEqual(tlsFor('127.0.0.1', true), {}, 'no SNI for an IP address (RFC 6066)');
  t.deepEqual(tlsFor('h', { servername: 'x' }), { servername: 'x' });
  t.is(tlsFor('h', false), undefined);
});

test.serial('a stalled TLS server times out at the operation deadline; the next connection works', async (t) => {
  const c = new MemcacheLockClient({ servers: [server.address], tls: { ca: pki.ca }, timeoutMs: 300 });
  t.teardown(() => c.close());
  const warm = await c.add('tls-stall', Buffer.from('v'), 10);
  if (warm.status !== 'ok') return t.fail();
  await server.pause();
  try {
    const started = performance.now();
    const error = await t.throwsAsync(c.get('tls-stall'), { instanceOf: MemcacheUnavailableError });
    t.regex(error?.message ?? '', /timed out/);
    t.true(performance.now() - started < 300 * 3);
  } finally {
    await server.resume();
  }
  const entry = await c.get('tls-stall');
  t.is(entry?.value.toString(), 'v');
  t.false(c.isCurrent('tls-stall', warm.conn), 'a new connection (generation) after the timeout');
});

test.serial('a TLS handshake that never completes fails at the deadline, as not applied', async (t) => {
  const { startProxy } = await import('../helpers/proxy.js');
  const proxy = await startProxy({ host: '127.0.0.1', port: server.port });
  proxy.stall();
  const c = new MemcacheLockClient({
    servers: [proxy.address],
    tls: { ca: pki.ca, servername: 'localhost' },
    timeoutMs: 300,
  });
  t.teardown(async () => {
    await c.close();
    await proxy.close();
  });
  const started = performance.now();
  const error = await t.throwsAsync(c.add('tls-handshake', Buffer.from('v'), 10), {
    instanceOf: MemcacheUnavailableError,
  });
  const elapsed = performance.now() - started;
  t.true(elapsed >= 290 && elapsed < 300 * 3, `failed after ${elapsed.toFixed(0)} ms`);
  t.regex(error?.message ?? '', /timed out/);
  t.false(error?.mayHaveApplied, 'the request never left: the handshake did not finish');
  t.is(await server.raw.get('tls-handshake'), null);
});

test.serial(
  'README Connecting: the CLI with --tls trusts a private CA given in NODE_EXTRA_CA_CERTS, and without it fails as unavailable',
  async (t) => {
    const cli = path.join(root, 'dist', 'cli.js');
    const inspect = (env: NodeJS.ProcessEnv): Promise<{ code: number; out: string }> =>
      new Promise((resolve) => {
        execFile(
          process.execPath,
          [cli, 'inspect', 'private-ca', '--servers', server.address, '--tls', '--timeout-ms', '3000'],
          {
            env: { ...process.env, MEMCACHE_SERVERS: undefined, NODE_EXTRA_CA_CERTS: undefined, ...env },
            timeout: 20_000,
          },
          (error, stdout, stderr) =>
            resolve({
              code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1,
              out: stdout + stderr,
            }),
        );
      });
    const trusted = await inspect({ NODE_EXTRA_CA_CERTS: path.join(pki.dir, 'ca.pem') });
    t.is(trusted.code, 1, `the key is free (exit 1), read over TLS: ${trusted.out}`);
    const untrusted = await inspect({});
    t.is(untrusted.code, 3, `memcache unavailable (exit 3) without the CA: ${untrusted.out}`);
  },
);
/** Runs the `memlock` command (dist/cli.js) with `env` added; never rejects. */
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(root, 'dist', 'cli.js'), ...args],
      { env: { ...process.env, MEMCACHE_SERVERS: undefined, ...env }, timeout: 20_000 },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr }),
    );
  });
}

test.serial('memlock command: --ca trusts a private CA (so does NODE_EXTRA_CA_CERTS)', async (t) => {
  const caFile = path.join(pki.dir, 'ca-only.pem');
  writeFileSync(caFile, pki.ca);
  const m = new Memlock({ servers: server.address, tls: { ca: pki.ca }, prefix: 'tls-cli:' });
  t.teardown(() => m.close());
  const lock = await m.acquire('job', 'worker-tls');
  const args = ['inspect', 'job', '--prefix', 'tls-cli:', '--servers', server.address, '--timeout-ms', '3000'];
  for (const [how, r] of [
    ['--ca', await cli([...args, '--ca', caFile])],
    ['NODE_EXTRA_CA_CERTS', await cli([...args, '--tls'], { NODE_EXTRA_CA_CERTS: caFile })],
  ] as const) {
    t.is(r.code, 0, `${how}: ${r.stderr}`);
    t.regex(r.stdout, /holder: +worker-tls/, how);
  }
  await lock.release();
});

test.serial('memlock command: each TLS failure gets its own hint, not "down, unreachable or slower"', async (t) => {
  const otherCaFile = path.join(pki.dir, 'other-ca-only.pem');
  writeFileSync(otherCaFile, pki.otherCa);
  const caFile = path.join(pki.dir, 'ca-only.pem');
  writeFileSync(caFile, pki.ca);
  const plain = await startMemcached();
  t.teardown(() => plain.stop());
  const inspect = (...extra: string[]): string[] => ['inspect', 'k', '--timeout-ms', '3000', ...extra];
  const notDown = /down, unreachable or slower than timeoutMs/;
  const fails = async (args: string[], hint: RegExp): Promise<void> => {
    const r = await cli(args);
    t.is(r.code, 3, args.join(' '));
    t.regex(r.stderr, hint, args.join(' '));
    t.notRegex(r.stderr, notDown, args.join(' '));
    t.is(r.stderr.trimEnd().split('\n').length, 1, 'one line (OpenSSL ends some messages in a newline)');
  };
  const untrusted =
    /likely cause: the TLS certificate of 127\.0\.0\.1:\d+ is not signed by a CA this process trusts: pass its CA with --ca FILE, or set NODE_EXTRA_CA_CERTS=FILE\)$/m;
  await fails(inspect('--servers', server.address, '--tls'), untrusted);
  await fails(inspect('--servers', server.address, '--ca', otherCaFile), untrusted);
  // 127.1 is 127.0.0.1, but not a name the certificate lists (localhost, 127.0.0.1).
  await fails(
    inspect('--servers', `127.1:${server.port}`, '--ca', caFile),
    /likely cause: the TLS certificate of 127\.1:\d+ is for other host names: connect by a name it lists \(--servers NAME:PORT\)/,
  );
  for (const protocol of ['binary', 'meta']) {
    await fails(
      inspect('--servers', server.address, '--protocol', protocol),
      /reset the connection: if it speaks TLS \(memcached -Z\), pass --tls; else it is down or restarting/,
    );
  }
  await fails(
    inspect('--servers', plain.address, '--tls'),
    /likely cause: 127\.0\.0\.1:\d+ does not speak TLS on that port: drop --tls, or use its TLS port/,
  );
});
