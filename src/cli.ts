#!/usr/bin/env node
/**
 * The `memlock` command: see who holds a lock, break a stuck one, watch keys.
 * Talks to memcache through the same `LockClient` transport as the library
 * and the same key derivation and value decoding, so what it shows is what
 * memlock sees. Exit codes: 0 ok, 1 not found or refused, 2 usage error,
 * 3 memcache unavailable.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { LockClient } from './client.js';
import { formatEvent, likelyCause } from './diagnostics.js';
import { memcacheKeyOf } from './keys.js';
import { resolveMemlockOptions, type MemlockOptions } from './options.js';
import { decodeValue, type Holder } from './protocol.js';
import type { ProtocolName } from './transport/codec.js';
import { MemcacheLockClient } from './transport/memcache-lock-client.js';

const EXIT_OK = 0;
const EXIT_NOT_FOUND = 1;
const EXIT_USAGE = 2;
const EXIT_UNAVAILABLE = 3;

const PROTOCOLS: readonly ProtocolName[] = ['binary', 'meta', 'text'];

const HELP = `Usage: memlock <command> [options]

Commands:
  inspect KEY            Who holds KEY: holder, acquired at, entry age.
  release KEY --force    Delete KEY's entry (CAS-checked: exactly the entry read).
  watch KEY...           Poll keys and print an event when a holder changes (Ctrl-C stops).

Options:
  --servers LIST         memcache servers, 'host:port[,host:port]' (default: MEMCACHE_SERVERS, else localhost:11211)
  --prefix PREFIX        key prefix of the Memlock instances (default: 'memlock:')
  --protocol NAME        'binary', 'meta' or 'text', as the library's \`protocol\` option
  --tls                  connect with TLS (system CAs), as the library's \`tls: true\`
  --ca FILE              connect with TLS, trusting the CA certificate(s) in FILE (PEM) instead of
                         the system CAs, as the library's \`tls: { ca }\`
  --timeout-ms N         deadline of each memcache operation (default: 500)
  --interval-ms N        watch: poll interval (default: 1000)
  --json                 machine-readable output (one JSON object per line for watch)
  --force                release: really delete
  -h, --help             show this help

Exit codes: 0 ok, 1 no entry / refused / changed meanwhile, 2 usage error, 3 memcache unavailable.
Credentials: MEMCACHE_USERNAME / MEMCACHE_PASSWORD, or user:pass@host:port in --servers.
Private CA: --ca FILE, or NODE_EXTRA_CA_CERTS=FILE (node reads it at start; the system CAs stay trusted).
`;

class UsageError extends Error {}

interface Output {
  out(line: string): void;
  err(line: string): void;
}

const stdio: Output = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
};

interface Parsed {
  command: string;
  keys: string[];
  json: boolean;
  force: boolean;
  intervalMs: number;
  options: MemlockOptions;
}

function parse(argv: string[]): Parsed | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        servers: { type: 'string' },
        prefix: { type: 'string' },
        protocol: { type: 'string' },
        tls: { type: 'boolean' },
        ca: { type: 'string' },
        'timeout-ms': { type: 'string' },
        'interval-ms': { type: 'string' },
        json: { type: 'boolean' },
        force: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help === true) return 'help';
  const [command, ...keys] = positionals;
  if (command === undefined) throw new UsageError('missing command (inspect, release or watch)');
  if (!['inspect', 'release', 'watch'].includes(command))
    throw new UsageError(`unknown command ${JSON.stringify(command)} (inspect, release or watch)`);
  if (keys.length === 0) throw new UsageError(`${command}: missing KEY`);
  if (command !== 'watch' && keys.length > 1) throw new UsageError(`${command}: expected one KEY, got ${keys.length}`);
  if (keys.includes('')) throw new UsageError(`${command}: KEY must not be empty`);
  if (values.force === true && command !== 'release') throw new UsageError('--force applies to release only');
  if (values.protocol !== undefined && !PROTOCOLS.includes(values.protocol as ProtocolName)) {
    throw new UsageError(`--protocol must be 'binary', 'meta' or 'text', got ${JSON.stringify(values.protocol)}`);
  }
  const number = (name: string, text: string | undefined, fallback: number): number => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isFinite(value) || value <= 0)
      throw new UsageError(`--${name} must be a positive number, got ${JSON.stringify(text)}`);
    return value;
  };
  const options: MemlockOptions = {
    servers: values.servers,
    prefix: values.prefix,
    timeoutMs: number('timeout-ms', values['timeout-ms'], 500),
    protocol: values.protocol as ProtocolName | undefined,
    tls: values.ca !== undefined ? { ca: readCa(values.ca) } : values.tls === true ? true : undefined,
  };
  return {
    command,
    keys,
    json: values.json === true,
    force: values.force === true,
    intervalMs: number('interval-ms', values['interval-ms'], 1000),
    options,
  };
}

/** The PEM in `--ca FILE`. */
function readCa(file: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (error) {
    throw new UsageError(`--ca: cannot read ${JSON.stringify(file)}: ${(error as Error).message}`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----'))
    throw new UsageError(`--ca: ${JSON.stringify(file)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return pem;
}

/** The CLI's own transport: the library's, with the same validated options. */
function openClient(options: MemlockOptions): { client: LockClient; prefix: string } {
  try {
    const resolved = resolveMemlockOptions(options);
    const client = new MemcacheLockClient({
      servers: resolved.servers,
      protocol: resolved.protocol,
      tls: resolved.tls,
      username: resolved.username,
      password: resolved.password,
      timeoutMs: resolved.timeoutMs,
      ref: true,
    });
    return { client, prefix: resolved.prefix };
  } catch (error) {
    // Invalid options (a bad server name, prefix, timeout): the library's TypeError/RangeError names it.
    if (error instanceof TypeError || error instanceof RangeError) throw new UsageError(error.message);
    throw error;
  }
}

/** What one read of a key found. */
interface Snapshot {
  key: string;
  memcacheKey: string;
  server: string;
  /** `free`: no entry; `foreign`: an entry memlock did not write. */
  state: 'free' | 'foreign' | Holder['state'];
  holder: Holder | null;
  cas: bigint | undefined;
}

async function read(client: LockClient, prefix: string, key: string): Promise<Snapshot> {
  const memcacheKey = memcacheKeyOf(prefix, key);
  const entry = await client.get(memcacheKey);
  const holder = entry === null ? null : decodeValue(entry.value);
  return {
    key,
    memcacheKey: memcacheKey,
    server: client.serverOf(memcacheKey),
    state: entry === null ? 'free' : holder === null ? 'foreign' : holder.state,
    holder,
    cas: entry?.cas,
  };
}

function describeSnapshot(s: Snapshot, now: number): Record<string, unknown> {
  return {
    key: s.key,
    memcacheKey: s.memcacheKey,
    server: s.server,
    state: s.state,
    clientId: s.holder?.clientId ?? null,
    acquiredAt: s.holder === null ? null : new Date(s.holder.acquiredAt).toISOString(),
    ageMs: s.holder === null ? null : Math.max(0, Math.round(now - s.holder.acquiredAt)),
  };
}

const stateText: Record<Snapshot['state'], string> = {
  free: 'free (no entry)',
  held: 'held',
  done: 'done (a completed run: holdAfterMs marker)',
  reserved: 'reserved for a waiter (fair handoff)',
  foreign: 'blocked by an entry memlock did not write',
};

function printSnapshot(io: Output, s: Snapshot, now: number): void {
  io.out(`key:         ${s.key}`);
  io.out(`entry:       ${s.memcacheKey} on ${s.server}`);
  io.out(`state:       ${stateText[s.state]}`);
  if (s.holder !== null) {
    io.out(`holder:      ${s.holder.clientId}`);
    io.out(`acquired at: ${new Date(s.holder.acquiredAt).toISOString()} (holder's clock)`);
    io.out(`entry age:   ${formatAge(now - s.holder.acquiredAt)}`);
  }
}

function formatAge(ms: number): string {
  if (ms < 0) return `${formatAge(-ms)} in the future (clock skew between hosts)`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7_200_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

async function inspect(io: Output, client: LockClient, prefix: string, p: Parsed): Promise<number> {
  const key = p.keys[0] as string;
  const s = await read(client, prefix, key);
  const now = Date.now();
  if (p.json) io.out(JSON.stringify(describeSnapshot(s, now)));
  else printSnapshot(io, s, now);
  return s.state === 'free' ? EXIT_NOT_FOUND : EXIT_OK;
}

async function release(io: Output, client: LockClient, prefix: string, p: Parsed): Promise<number> {
  const key = p.keys[0] as string;
  const s = await read(client, prefix, key);
  const now = Date.now();
  const what =
    s.holder === null
      ? `the entry ${s.memcacheKey} (${stateText[s.state]})`
      : `the entry ${s.memcacheKey} (${s.state}, holder ${JSON.stringify(s.holder.clientId)}, acquired ${new Date(s.holder.acquiredAt).toISOString()}, ${formatAge(now - s.holder.acquiredAt)} ago)`;
  const result = (outcome: string, removed: boolean): void => {
    if (p.json) io.out(JSON.stringify({ ...describeSnapshot(s, now), outcome, removed }));
  };
  if (s.state === 'free' || s.cas === undefined) {
    result('not-found', false);
    io.err(`memlock: nothing to release: ${s.memcacheKey} has no entry on ${s.server}`);
    return EXIT_NOT_FOUND;
  }
  if (!p.force) {
    result('refused', false);
    io.err(`memlock: would remove ${what}; refusing without --force (the holder's signal aborts at its next renewal)`);
    return EXIT_NOT_FOUND;
  }
  // Delete exactly the entry we read: if anyone renewed, released or took it
  // since, the CAS differs and nothing is removed.
  const deleted = await client.casDelete(s.memcacheKey, s.cas);
  if (deleted.status === 'ok') {
    result('removed', true);
    if (!p.json) io.out(`removed ${what}`);
    return EXIT_OK;
  }
  result(deleted.status === 'exists' ? 'changed' : 'gone', false);
  io.err(
    deleted.status === 'exists'
      ? `memlock: ${s.memcacheKey} changed after it was read (renewed, released or taken); nothing removed. Run it again to remove the current entry.`
      : `memlock: ${s.memcacheKey} disappeared after it was read; nothing removed`,
  );
  return EXIT_NOT_FOUND;
}

/** Diagnostics-style events for a change between two reads of a key. */
function events(
  before: Snapshot | undefined,
  after: Snapshot,
  intervalMs: number,
): Array<{ event: string; fields: Record<string, unknown> }> {
  const key = after.key;
  const h = after.holder;
  const current = h === null ? {} : { clientId: h.clientId, acquiredAt: new Date(h.acquiredAt) };
  if (before === undefined)
    return [{ event: 'state', fields: { key, state: after.state, ...current, server: after.server } }];
  const p = before.holder;
  const sameEntry = before.state === after.state && p?.token === h?.token && before.cas === after.cas;
  const sameAcquisition = p !== null && h !== null && p.token === h.token;
  if (sameEntry || (sameAcquisition && before.state === after.state)) return []; // unchanged, or renewed
  if (after.state === 'free') {
    return [
      {
        event: before.state === 'done' ? 'expired' : 'released',
        fields: {
          key,
          previousClientId: p?.clientId,
          previousState: before.state,
          heldMs: p === null ? undefined : Date.now() - p.acquiredAt,
          note: `released or expired within the last ${intervalMs} ms`,
        },
      },
    ];
  }
  if (after.state === 'done')
    return [{ event: 'completed', fields: { key, clientId: h?.clientId, completedAt: current.acquiredAt } }];
  if (after.state === 'reserved')
    return [{ event: 'reserved', fields: { key, waiter: h?.clientId, previousClientId: p?.clientId } }];
  if (after.state === 'foreign') return [{ event: 'foreign', fields: { key, previousClientId: p?.clientId } }];
  // held by a new acquisition
  if (before.state === 'held' && p !== null && h !== null) {
    return [
      {
        event: 'stolen',
        fields: {
          key,
          clientId: h.clientId,
          how: p.clientId === h.clientId ? 'takeover' : 'stolen',
          previousClientId: p.clientId,
          previousAcquiredAt: new Date(p.acquiredAt),
        },
      },
    ];
  }
  return [{ event: 'acquired', fields: { key, ...current, server: after.server } }];
}

async function watch(io: Output, client: LockClient, prefix: string, p: Parsed): Promise<number> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const last = new Map<string, Snapshot>();
  const failing = new Set<string>();
  const emit = (event: string, fields: Record<string, unknown>): void => {
    if (p.json)
      io.out(
        JSON.stringify({ time: new Date().toISOString(), event, ...fields }, (_k, v: unknown) =>
          typeof v === 'bigint' ? String(v) : v,
        ),
      );
    else
      io.out(
        `${new Date().toISOString()} ${formatEvent(event, Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)))}`,
      );
  };
  try {
    while (!stop.signal.aborted) {
      const started = performance.now();
      await Promise.all(
        p.keys.map(async (key) => {
          try {
            const s = await read(client, prefix, key);
            if (failing.delete(key)) emit('recovered', { key, server: s.server });
            for (const { event, fields } of events(last.get(key), s, p.intervalMs)) emit(event, fields);
            last.set(key, s);
          } catch (error) {
            // One line per failure streak, not one per poll.
            if (!failing.has(key)) {
              failing.add(key);
              emit('error', { key, error });
            }
          }
        }),
      );
      const wait = Math.max(0, p.intervalMs - (performance.now() - started));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, wait);
        function done(): void {
          clearTimeout(timer);
          stop.signal.removeEventListener('abort', done);
          resolve();
        }
        stop.signal.addEventListener('abort', done, { once: true });
      });
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return EXIT_OK;
}

/** Runs the command line `argv` (without node and script); resolves with the exit code. */
async function main(argv: string[], io: Output = stdio): Promise<number> {
  let p: Parsed | 'help';
  try {
    p = parse(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.err(`memlock: ${error.message}\nRun 'memlock --help' for usage.`);
    return EXIT_USAGE;
  }
  if (p === 'help') {
    io.out(HELP.trimEnd());
    return EXIT_OK;
  }
  let opened;
  try {
    opened = openClient(p.options);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.err(`memlock: ${error.message}`);
    return EXIT_USAGE;
  }
  const { client, prefix } = opened;
  try {
    if (p.command === 'inspect') return await inspect(io, client, prefix, p);
    if (p.command === 'release') return await release(io, client, prefix, p);
    return await watch(io, client, prefix, p);
  } catch (error) {
    const cause = likelyCause(error, undefined, { style: 'flags', serversGiven: p.options.servers !== undefined });
    // trimEnd: OpenSSL's messages end in a newline.
    io.err(`memlock: ${(error as Error).message.trimEnd()}${cause === undefined ? '' : ` (likely cause: ${cause})`}`);
    return EXIT_UNAVAILABLE;
  } finally {
    await client.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`memlock: unexpected error: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  },
);
