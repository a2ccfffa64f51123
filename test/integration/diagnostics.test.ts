/** Typed `subscribe(name, fn)`, and `NODE_DEBUG=memlock` logging (with the likely cause of errors). */
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { subscribe, channels, MemcacheUnavailableError, LockLostError, type AcquiredMessage } from '../../src/index.js';
import { formatEvent, likelyCause } from '../../src/diagnostics.js';
import { startMemcached } from '../helpers/memcached.js';
import { sharedServer } from '../helpers/shared.js';

const shared = sharedServer(test);

test.serial('subscribe(name, fn) delivers typed payloads until the returned function unsubscribes', async (t) => {
  const m = shared.memlock();
  const seen: Array<[AcquiredMessage, string]> = [];
  const stop = subscribe('memlock:acquired', (message, name) => {
    if (message.key.startsWith('sub-')) seen.push([message, name]);
  });
  t.true(channels.acquired.hasSubscribers);
  await m.tryWithLock('sub-1', 'A', () => 1);
  stop();
  stop(); // idempotent
  t.false(channels.acquired.hasSubscribers);
  await m.tryWithLock('sub-2', 'A', () => 2);
  t.is(seen.length, 1);
  t.like(seen[0]?.[0], { key: 'sub-1', clientId: 'A', how: 'added', server: shared.mc.address });
  t.is(seen[0]?.[1], 'memlock:acquired');
});

test('subscribe rejects unknown channel names and non-functions with a TypeError naming the argument', (t) => {
  t.throws(() => subscribe('memlock:nope' as 'memlock:lost', () => {}), {
    instanceOf: TypeError,
    message: /`name`.*memlock:acquired/,
  });
  t.throws(() => subscribe('memlock:lost', 'nope' as unknown as () => void), {
    instanceOf: TypeError,
    message: /`fn`/,
  });
  t.false(channels.lost.hasSubscribers);
});

test('likelyCause names MEMCACHE_SERVERS when the default server refuses connections, and other causes', (t) => {
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:11211'), { code: 'ECONNREFUSED' });
  const error = new MemcacheUnavailableError('memcache localhost:11211 is unreachable', {
    cause: refused,
    server: 'localhost:11211',
  });
  const saved = process.env.MEMCACHE_SERVERS;
  try {
    delete process.env.MEMCACHE_SERVERS;
    t.regex(likelyCause(error) ?? '', /nothing accepts connections at localhost:11211.*MEMCACHE_SERVERS is unset/);
    process.env.MEMCACHE_SERVERS = 'cache-1:11211';
    t.notRegex(likelyCause(error) ?? '', /MEMCACHE_SERVERS/);
  } finally {
    if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
    else process.env.MEMCACHE_SERVERS = saved;
  }
  const timeout = new MemcacheUnavailableError('timed out', { server: 'cache-1:11211' });
  t.regex(likelyCause(timeout, 'cache-1:11211') ?? '', /cache-1:11211 is down, unreachable or slower than timeoutMs/);
  t.regex(likelyCause(new LockLostError('k', 'deadline')) ?? '', /event loop was blocked/);
  t.regex(likelyCause(new LockLostError('k', 'gone')) ?? '', /evicted/);
  t.is(likelyCause(new Error('something else')), undefined);
  t.is(
    formatEvent('memlock:released', { key: 'k', clientId: 'A', heldMs: 12.34567 }),
    "released key='k' clientId='A' heldMs=12.346",
  );
});

test('NODE_DEBUG=memlock logs every event without subscribers, errors with their likely cause', async (t) => {
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const fixture = fileURLToPath(new URL('../fixtures/debug-events.mts', import.meta.url));
  const child = spawn(process.execPath, ['--import=tsx', fixture], {
    env: { ...process.env, MEMCACHE_SERVERS: mc.address, NODE_DEBUG: 'memlock', NODE_OPTIONS: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let paused = false;
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    if (stdout.includes('held') && !paused) {
      paused = true;
      void mc.pause();
    }
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  t.is(code, 0, stderr);
  t.regex(stdout, /done/);
  const pid = child.pid ?? 0;
  t.regex(
    stderr,
    new RegExp(
      `MEMLOCK ${pid}: acquired key='dbg-1' clientId='worker-A' how='(added|recovered)' server='${mc.address}' durationMs=`,
    ),
  );
  t.regex(stderr, new RegExp(`MEMLOCK ${pid}: released key='dbg-1' clientId='worker-A' heldMs=`));
  t.regex(
    stderr,
    /heartbeat-error key='dbg-2' .*error='MemcacheUnavailableError: .*\(likely cause: .*(down, unreachable or slower than timeoutMs|nothing accepts connections)/,
  );
  t.regex(stderr, /lost key='dbg-2' clientId='worker-A' kind='unreachable' error='LockLostError: .*\(likely cause: /);
});
