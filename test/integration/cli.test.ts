/**
 * The `memlock` command (dist/cli.js, as installed by `bin`), spawned against
 * a real memcached: inspect, release --force (CAS delete of exactly the entry
 * read), watch (events on holder changes, clean exit on SIGINT), options,
 * usage errors and exit codes.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { LockLostError } from '../../src/index.js';
import { root } from '../helpers/package.js';
import { startProxy } from '../helpers/proxy.js';
import { startMemcached } from '../helpers/memcached.js';
import { startTwemproxy } from '../helpers/twemproxy.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from '../helpers/resources.js';
import { sharedServer } from '../helpers/shared.js';

const shared = sharedServer(test);
const cli = path.join(root, 'dist', 'cli.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [cli, ...args],
      { env: { ...process.env, MEMCACHE_SERVERS: undefined, ...env }, timeout: 20_000 },
      (error, stdout, stderr) => {
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
      },
    );
  });
}

/** A fresh prefix per test, so tests do not see each other's keys. */
/**
 * `release --force` CAS-deletes exactly the entry it read: a holder renewing
 * (every 200 ms here) between the CLI's read and its delete makes it remove
 * nothing and say so, exit 1 ("run it again"). On a busy machine that window
 * can meet a renewal; run it again, as the message says, a few times.
 */
async function forceRelease(argv: string[]): Promise<Awaited<ReturnType<typeof run>>> {
  let r = await run(argv);
  for (let i = 0; i < 4 && r.code === 1 && /changed after it was read/.test(r.stdout + r.stderr); i++)
    r = await run(argv);
  return r;
}

function setup(): { prefix: string; args: string[]; memlock: ReturnType<typeof shared.memlock> } {
  const prefix = `cli${randomUUID().slice(0, 6)}:`;
  return {
    prefix,
    args: ['--servers', shared.mc.address, '--prefix', prefix, '--timeout-ms', '3000'],
    memlock: shared.memlock({ leaseMs: 4000, heartbeatMs: 200 }, prefix),
  };
}

test('--help prints usage and exits 0; usage errors exit 2 with a clear message', async (t) => {
  const help = await run(['--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /Usage: memlock <command>/);
  t.regex(help.stdout, /inspect KEY/);
  t.regex(help.stdout, /--ca FILE/);
  t.regex(help.stdout, /NODE_EXTRA_CA_CERTS=FILE/);
  const cases: Array<[string[], RegExp]> = [
    [[], /missing command/],
    [['frobnicate', 'k'], /unknown command "frobnicate"/],
    [['inspect'], /inspect: missing KEY/],
    [['inspect', 'a', 'b'], /expected one KEY/],
    [['inspect', 'k', '--bogus'], /Unknown option '--bogus'/],
    [['inspect', 'k', '--force'], /--force applies to release only/],
    [['inspect', 'k', '--protocol', 'ascii'], /--protocol must be 'binary', 'meta' or 'text'/],
    [['inspect', 'k', '--timeout-ms', 'soon'], /--timeout-ms must be a positive number/],
    [['inspect', 'k', '--servers', 'host:notaport'], /servers/],
    [['inspect', 'k', '--prefix', 'has space'], /prefix/],
    [['inspect', 'k', '--ca', '/nonexistent/ca.pem'], /--ca: cannot read "\/nonexistent\/ca.pem"/],
    [['inspect', 'k', '--ca', path.join(root, 'package.json')], /--ca: .* holds no PEM certificate/],
  ];
  for (const [args, message] of cases) {
    const r = await run(args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
    t.is(r.stdout, '', args.join(' '));
  }
});

test('inspect: holder, acquired at and entry age of a held key; --json; exit 1 when free', async (t) => {
  const { args, memlock } = setup();
  const free = await run(['inspect', 'job', ...args]);
  t.is(free.code, 1);
  t.regex(free.stdout, /state: +free/);
  const lock = await memlock.acquire('job', 'worker-7');
  const text = await run(['inspect', 'job', ...args]);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /holder: +worker-7/);
  const acquiredAt = (await memlock.inspect('job'))?.acquiredAt.toISOString();
  t.regex(text.stdout, new RegExp(`acquired at: ${acquiredAt}`));
  t.regex(text.stdout, /entry age: +\d/);
  const json = await run(['inspect', 'job', '--json', ...args]);
  t.is(json.code, 0);
  const info = JSON.parse(json.stdout) as {
    clientId: string;
    acquiredAt: string;
    ageMs: number;
    state: string;
    server: string;
  };
  t.is(info.clientId, 'worker-7');
  t.is(info.acquiredAt, acquiredAt ?? 'missing');
  t.is(info.state, 'held');
  t.is(info.server, shared.mc.address);
  t.true(info.ageMs >= 0 && info.ageMs < 60_000);
  t.true(await lock.release());
});

test('inspect: a holdAfterMs marker reads as done, as the README calls it, naming who completed it', async (t) => {
  const { args, memlock } = setup();
  await memlock.tryWithLock('report', 'worker-3', () => 'ok', { holdAfterMs: 10_000 });
  const text = await run(['inspect', 'report', ...args]);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^state: +done \(a completed run: holdAfterMs marker\)$/m);
  t.regex(text.stdout, /^holder: +worker-3$/m);
  const json = await run(['inspect', 'report', '--json', ...args]);
  t.like(JSON.parse(json.stdout), { state: 'done', clientId: 'worker-3' });
});

test('--protocol meta reads the same entries as the binary protocol', async (t) => {
  const { args, memlock } = setup();
  const lock = await memlock.acquire('meta', 'worker-m');
  const r = await run(['inspect', 'meta', '--json', '--protocol', 'meta', ...args]);
  t.is(r.code, 0, r.stderr);
  t.like(JSON.parse(r.stdout), { clientId: 'worker-m', state: 'held' });
  const released = await forceRelease(['release', 'meta', '--force', '--protocol', 'meta', ...args]);
  t.is(released.code, 0, released.stderr);
  t.is(await memlock.inspect('meta'), null);
  await waitFor(() => lock.signal.aborted, 2000);
});

test('--protocol text reads and releases the same entries through twemproxy', async (t) => {
  const { prefix, memlock } = setup();
  const proxy = await startTwemproxy([shared.mc]);
  t.teardown(() => proxy.stop());
  const args = ['--servers', proxy.address, '--prefix', prefix, '--timeout-ms', '3000', '--protocol', 'text'];
  const lock = await memlock.acquire('text', 'worker-t');
  const r = await run(['inspect', 'text', '--json', ...args]);
  t.is(r.code, 0, r.stderr);
  t.like(JSON.parse(r.stdout), { clientId: 'worker-t', state: 'held' });
  const released = await forceRelease(['release', 'text', '--force', ...args]);
  t.is(released.code, 0, released.stderr);
  t.is(await memlock.inspect('text'), null);
  await waitFor(() => lock.signal.aborted, 2000);
  // twemproxy drops the connection on a meta command: the CLI reports the server unavailable.
  const meta = await run(['inspect', 'text', ...args.slice(0, -1), 'meta']);
  t.is(meta.code, 3, meta.stderr);
});

test('servers from MEMCACHE_SERVERS when --servers is absent; an unreachable server exits 3 naming it', async (t) => {
  const { prefix, memlock } = setup();
  const lock = await memlock.acquire('env', 'A');
  const r = await run(['inspect', 'env', '--prefix', prefix, '--json'], { MEMCACHE_SERVERS: shared.mc.address });
  t.is(r.code, 0, r.stderr);
  t.is((JSON.parse(r.stdout) as { clientId: string }).clientId, 'A');
  await lock.release();
  const down = await run(['inspect', 'env', '--servers', '127.0.0.1:1', '--timeout-ms', '300']);
  t.is(down.code, 3);
  t.regex(down.stderr, /127\.0\.0\.1:1/);
  t.regex(down.stderr, /likely cause/);
});

test('release refuses without --force and leaves the lock alone', async (t) => {
  const { args, memlock } = setup();
  const lock = await memlock.acquire('stuck', 'worker-1');
  const r = await run(['release', 'stuck', ...args]);
  t.is(r.code, 1);
  t.regex(r.stderr, /refusing without --force/);
  t.regex(r.stderr, /holder "worker-1"/);
  await new Promise((resolve) => setTimeout(resolve, 500)); // two heartbeats
  t.false(lock.signal.aborted);
  t.is((await memlock.inspect('stuck'))?.clientId, 'worker-1');
  t.true(await lock.release());
});

test('release --force deletes exactly the entry it read and says what it removed; the holder learns it lost the lock', async (t) => {
  const { args, memlock } = setup();
  const lock = await memlock.acquire('stuck', 'worker-1');
  const r = await forceRelease(['release', 'stuck', '--force', ...args]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /removed the entry .*stuck \(held, holder "worker-1", acquired /);
  t.is(await memlock.inspect('stuck'), null);
  await waitFor(() => lock.signal.aborted, 2000);
  t.is((lock.signal.reason as LockLostError).kind, 'gone');
  t.false(await lock.release());
  const again = await run(['release', 'stuck', '--force', '--json', ...args]);
  t.is(again.code, 1);
  t.like(JSON.parse(again.stdout), { outcome: 'not-found', removed: false });
  t.regex(again.stderr, /nothing to release/);
});

test('release --force never removes an entry that changed after it was read (CAS)', async (t) => {
  const { prefix } = setup();
  // The CLI talks through a proxy that delays every chunk by 300 ms, so at
  // least 600 ms pass between the server answering its read and receiving its
  // delete; the holder renews (a CAS write) directly every 50 ms meanwhile.
  const proxy = await startProxy(shared.mc);
  t.teardown(() => proxy.close());
  proxy.setLatency(300);
  const busy = shared.memlock({ leaseMs: 2000, heartbeatMs: 50 }, prefix);
  const lock = await busy.acquire('hot', 'renewer');
  const r = await run([
    'release',
    'hot',
    '--force',
    '--json',
    '--servers',
    proxy.address,
    '--prefix',
    prefix,
    '--timeout-ms',
    '5000',
  ]);
  t.is(r.code, 1, r.stderr);
  t.like(JSON.parse(r.stdout), { outcome: 'changed', removed: false, clientId: 'renewer' });
  t.regex(r.stderr, /changed after it was read .*nothing removed/);
  t.false(lock.signal.aborted);
  t.is((await busy.inspect('hot'))?.clientId, 'renewer', 'the entry is still there');
  t.true(await lock.release());
});

test('watch prints diagnostics-style events when the holder changes and exits 0 on SIGINT', async (t) => {
  const { args, memlock } = setup();
  const child = spawn(process.execPath, [cli, 'watch', 'w1', 'w2', '--interval-ms', '50', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => {
    stdout += c;
  });
  child.stderr.setEncoding('utf8').on('data', (c: string) => {
    stderr += c;
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  t.teardown(() => child.kill('SIGKILL'));
  await waitFor(() => (stdout.match(/ state key=/g) ?? []).length === 2, 5000);
  t.regex(stdout, /state key='w1' state='free'/);
  const a = await memlock.acquire('w1', 'A');
  await waitFor(() => /acquired key='w1' clientId='A'/.test(stdout), 5000);
  const b = await memlock.acquire('w1', 'A'); // same clientId: a takeover
  await waitFor(() => /stolen key='w1' clientId='A' how='takeover' previousClientId='A'/.test(stdout), 5000);
  await a.release();
  await b.release();
  await waitFor(() => /released key='w1' previousClientId='A'/.test(stdout), 5000);
  t.notRegex(stdout, /key='w2' (clientId|previousClientId)/, 'w2 never changed');
  child.kill('SIGINT');
  t.is(await exited, 0, stderr);
});

test('watch --json: one JSON object per line; completed (holdAfterMs); one error per failure streak, then recovered', async (t) => {
  const own = await startMemcached();
  t.teardown(() => own.stop());
  const prefix = `cliw${randomUUID().slice(0, 6)}:`;
  const memlock = shared.memlock({ servers: own.address }, prefix);
  const child = spawn(
    process.execPath,
    [
      cli,
      'watch',
      'job',
      '--json',
      '--interval-ms',
      '50',
      '--timeout-ms',
      '300',
      '--servers',
      own.address,
      '--prefix',
      prefix,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => {
    stdout += c;
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  t.teardown(() => child.kill('SIGKILL'));
  const events = (): Array<Record<string, unknown>> =>
    stdout
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  const has = (event: string): boolean => events().some((e) => e.event === event);
  await waitFor(() => has('state'), 5000);
  t.like(events()[0], { event: 'state', key: 'job', state: 'free' });
  await memlock.tryWithLock('job', 'worker-9', () => sleep(300), { holdAfterMs: 3000 });
  await waitFor(() => has('completed'), 5000);
  t.like(
    events().find((e) => e.event === 'acquired'),
    { key: 'job', clientId: 'worker-9' },
  );
  t.like(
    events().find((e) => e.event === 'completed'),
    { key: 'job', clientId: 'worker-9' },
  );
  const seen = events().length;
  await own.pause();
  await waitFor(
    () =>
      events()
        .slice(seen)
        .some((e) => e.event === 'error'),
    5000,
  );
  await sleep(1000); // more failing polls
  t.is(
    events()
      .slice(seen)
      .filter((e) => e.event === 'error').length,
    1,
    'one line per failure streak',
  );
  await own.resume();
  await waitFor(() => has('recovered'), 5000);
  child.kill('SIGTERM');
  t.is(await exited, 0);
});
