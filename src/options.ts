/**
 * Option types, the one place for defaults, and validation. Validation runs
 * before any memcache traffic so bad input touches nothing; errors name the
 * option (`TypeError` for a wrong type, `RangeError` for a wrong value).
 */
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { EmptyClientIdError } from './errors.js';
import type { LockClient } from './client.js';
import type { ProtocolName } from './transport/codec.js';
import type { MemjsClientLike } from './transport/memjs-client.js';
import { parseServer } from './transport/servers.js';
import { holdTtlSeconds, leaseTtlSeconds } from './protocol.js';

/** All defaults in one place. */
export const defaults = Object.freeze({
  prefix: 'memlock:',
  leaseMs: 16_000,
  heartbeatMs: 1000,
  timeoutMs: 500,
  servers: 'localhost:11211',
  wait: Object.freeze({ timeoutMs: 30_000, minDelayMs: 2, maxDelayMs: 500 }),
  turn: Object.freeze({ maxMs: 5, maxHandoffs: 16 }),
});

/**
 * A process's turn with a key while other processes wait for it (a cohort
 * lock): its own waiting callers, including ones that arrive during the
 * turn, get the key from each other without a cross-process handoff until
 * either bound is reached; then the key goes to the process that has waited
 * longest. Larger bounds buy throughput (fewer handoffs between processes)
 * with unfairness: a remote waiter waits at most about one turn per process
 * ahead of it in the queue, plus the holds in progress.
 */
export interface TurnOptions {
  /** How long a turn lasts, from when the process got the key from memcache. 0 = no local handoffs while others wait. 0 to 60000. @default 5 */
  readonly maxMs?: number | undefined;
  /** Most local handoffs per turn. 0 = none while others wait. Integer, 0 to 1000000. @default 16 */
  readonly maxHandoffs?: number | undefined;
}

/** Smallest lease: memcache expiry has 1 s granularity, so 2 s is the least that leaves a guaranteed 1 s. */
export const MIN_LEASE_MS = 2000;
/** memcache treats expiries above 30 days as absolute unix times. */
export const MAX_LEASE_MS = 30 * 24 * 60 * 60 * 1000;

/** Options of `new Memlock()`. */
export interface MemlockOptions {
  /**
   * memcache servers, `'host:port'` or a list (comma-separated string or array).
   * Several servers are placed on a consistent hash ring; no failover. An
   * entry may carry SASL credentials as `'user:pass@host:port'`.
   * @default process.env.MEMCACHE_SERVERS, else 'localhost:11211'
   */
  readonly servers?: string | readonly string[] | undefined;
  /**
   * Bring your own memjs client instead of `servers`: memlock sends its
   * requests on that client's connections (binary protocol, no TLS: memjs has
   * neither meta nor TLS), never through its retry/failover logic, never
   * closes or resets them, and leaves the client open on `close()`. memlock
   * does not import memjs: any memjs >= 1.3 `Client` works.
   */
  readonly client?: MemjsClientLike | undefined;
  /** Lower-level transport (tests, custom backends). Takes precedence over `client`/`servers`. */
  readonly lockClient?: LockClient | undefined;
  /**
   * SASL PLAIN username (binary protocol only; memcached has no SASL on the text protocols).
   * @default process.env.MEMCACHE_USERNAME (as memjs reads it)
   */
  readonly username?: string | undefined;
  /** SASL PLAIN password. @default process.env.MEMCACHE_PASSWORD (as memjs reads it) */
  readonly password?: string | undefined;
  /**
   * Wire protocol of memlock's own connections: `'binary'` (memcached's
   * binary protocol, with SASL), `'meta'` (the meta text protocol of
   * memcached >= 1.6, its proxy, mcrouter, and ElastiCache Serverless) or
   * `'text'` (the classic ASCII commands only: `add`, `gets`, `cas`; for
   * twemproxy and other proxies that speak nothing else).
   * SASL credentials need `'binary'`. @default 'binary'
   */
  readonly protocol?: ProtocolName | undefined;
  /**
   * TLS for memlock's own connections: `true` uses the system CAs and each
   * server's host name as servername; an object is passed to `tls.connect`
   * (e.g. `{ ca }`, client certificates), `servername` defaulting to the host.
   * @default false
   */
  readonly tls?: boolean | TlsConnectionOptions | undefined;
  /** Prefix of every memcache key. @default 'memlock:' */
  readonly prefix?: string | undefined;
  /**
   * Lease length. Written as a TTL of `ceil(leaseMs / 1000) + 1` s (memcached's
   * whole-second clock can jump 2 s at once); each confirmed write holds the
   * lock for `ceil(leaseMs / 1000) - 1` s after it was sent, less a margin, so
   * a crashed holder blocks the key for at most `ceil(leaseMs / 1000) + 1` s.
   * 2 s to 30 days. @default 16000
   */
  readonly leaseMs?: number | undefined;
  /** Renewal interval; at most `leaseMs / 2`. @default 1000 */
  readonly heartbeatMs?: number | undefined;
  /** Deadline of each memcache operation. @default 500 */
  readonly timeoutMs?: number | undefined;
  /**
   * Whether open memcache connections keep the process alive. Pending
   * operations always do. @default true (false for the shared default instance)
   */
  readonly ref?: boolean | undefined;
  /** Bounds of a process's turn with a contested key (bounded unfairness, see `TurnOptions`). @default { maxMs: 5, maxHandoffs: 16 } */
  readonly turn?: TurnOptions | undefined;
}

/**
 * Wait options. A refused caller queues up in the key's waiter queue (fair
 * across processes); the queue's head polls the lock entry, the others
 * re-read the queue now and then.
 */
export interface WaitOptions {
  /** Give up (with `LockNotAcquiredError`) after this long. `Infinity` waits until the caller's signal aborts. @default 30000 */
  readonly timeoutMs?: number | undefined;
  /** Fastest poll of the queue's head (it slows to an eighth of how long the holder has held). @default 2 */
  readonly minDelayMs?: number | undefined;
  /** Slowest poll, for the head and for waiters further back. @default 500 */
  readonly maxDelayMs?: number | undefined;
}

/** Per-call options of `tryWithLock` and `acquire`. */
export interface LockOptions {
  /** Caller cancellation: aborts waiting, and aborts the signal handed to `fn` with the same reason. */
  readonly signal?: AbortSignal | undefined;
  /** Wait for the lock instead of failing at once. `true` uses the wait defaults. @default false */
  readonly wait?: boolean | WaitOptions | undefined;
  /** Take over a lock whose holder first acquired it longer ago than this (wall clock). @default undefined (never) */
  readonly stealAfterMs?: number | undefined;
  /** Per-call lease override, same bounds as the instance option. */
  readonly leaseMs?: number | undefined;
  /** Per-call heartbeat override, same bounds as the instance option. */
  readonly heartbeatMs?: number | undefined;
  /**
   * After `fn` resolves, keep the key blocked this long as a completed marker
   * (a CAS write) instead of deleting the entry: attempts meanwhile are
   * refused with `LockNotAcquiredError` whose `done` is `true`. Written as a
   * TTL of `ceil(holdAfterMs / 1000) + 2` s so that memcached's whole-second
   * clock, which can jump 2 s at once, keeps it at least `holdAfterMs`; it
   * may last up to about 3 s longer. When `fn` rejects, the entry is deleted as usual.
   * 0 to 30 days. @default 0 (delete at once)
   */
  readonly holdAfterMs?: number | undefined;
  /**
   * When acquisition fails with `MemcacheUnavailableError`, run `fn` anyway,
   * unlocked, with a signal that follows only the caller's `signal`; the call
   * is published on `memlock:fail-open`. Contention and loss are unaffected.
   * @default false (reject with `MemcacheUnavailableError`; `fn` is not called)
   */
  readonly failOpen?: boolean | undefined;
}

/** Resolved, validated per-call settings. */
export interface ResolvedLockOptions {
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly ttlSeconds: number;
  readonly stealAfterMs: number | undefined;
  readonly wait: Required<WaitOptions> | undefined;
  readonly signal: AbortSignal | undefined;
  /** Completed-marker expiry in whole seconds; 0 = delete on success. */
  readonly holdTtlSeconds: number;
  readonly failOpen: boolean;
}

/** Every option name of `new Memlock()`: the compiler keeps this in step with `MemlockOptions`. */
const MEMLOCK_OPTION_NAMES: Readonly<Record<keyof MemlockOptions, true>> = {
  servers: true,
  client: true,
  lockClient: true,
  username: true,
  password: true,
  protocol: true,
  tls: true,
  prefix: true,
  leaseMs: true,
  heartbeatMs: true,
  timeoutMs: true,
  ref: true,
  turn: true,
};
/** Every per-call option name (`tryWithLock`, `acquire`; `wrap` adds its own). */
export const LOCK_OPTION_NAMES: Readonly<Record<keyof LockOptions, true>> = {
  signal: true,
  wait: true,
  stealAfterMs: true,
  leaseMs: true,
  heartbeatMs: true,
  holdAfterMs: true,
  failOpen: true,
};
const WAIT_OPTION_NAMES: Readonly<Record<keyof WaitOptions, true>> = {
  timeoutMs: true,
  minDelayMs: true,
  maxDelayMs: true,
};

/**
 * Rejects option names that are not in `known` (a misspelling such as
 * `{ waitt: true }` would otherwise be ignored in JavaScript), naming the
 * unknown option and the closest known one when one is close.
 * @param where the options' owner in the message, e.g. 'tryWithLock options'
 */
export function checkKnownOptions(options: object, known: Readonly<Record<string, true>>, where: string): void {
  for (const name of Object.keys(options)) {
    if (Object.hasOwn(known, name)) continue;
    const closest = closestName(name, Object.keys(known));
    throw new TypeError(
      `Unknown option \`${name}\` in ${where}${closest === undefined ? '' : ` (did you mean \`${closest}\`?)`}; known: ${Object.keys(known).join(', ')}`,
    );
  }
}

/** The known name closest to `name` by edit distance (case ignored), if it is close enough to be a typo. */
function closestName(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  // 'waitt' -> 'wait' (1), 'sever' -> 'servers' (2), 'lease' -> 'leaseMs' (2); 'foo' -> nothing.
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/** Levenshtein distance (insert, delete, substitute), one row at a time. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitute = (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, substitute));
    }
    previous = current;
  }
  return previous[b.length] as number;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A finite number check that names the option. */
export function checkNumber(name: string, value: unknown, min: number, max: number, allowInfinity = false): number {
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(`Expected \`${name}\` to be a number, got ${describe(value)}`);
  }
  if (!allowInfinity && !Number.isFinite(value)) {
    throw new RangeError(`Expected \`${name}\` to be finite, got ${value}`);
  }
  if (value < min || value > max) {
    throw new RangeError(`Expected \`${name}\` to be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string')
    return `string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  return typeof value;
}

/** Validates lease/heartbeat as a pair (heartbeat <= lease / 2). */
export function checkLease(leaseMs: unknown, heartbeatMs: unknown): { leaseMs: number; heartbeatMs: number } {
  const lease = checkNumber('leaseMs', leaseMs, MIN_LEASE_MS, MAX_LEASE_MS);
  const beat = checkNumber('heartbeatMs', heartbeatMs, 0, Number.MAX_SAFE_INTEGER);
  if (beat <= 0) throw new RangeError(`Expected \`heartbeatMs\` to be > 0, got ${beat}`);
  if (beat > lease / 2) {
    throw new RangeError(`Expected \`heartbeatMs\` to be at most leaseMs / 2 (${lease / 2}), got ${beat}`);
  }
  return { leaseMs: lease, heartbeatMs: beat };
}

/** Validated instance settings. */
export interface ResolvedMemlockOptions {
  readonly prefix: string;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
  readonly servers: string[];
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly protocol: ProtocolName;
  readonly tls: boolean | TlsConnectionOptions;
  readonly ref: boolean;
  readonly turn: Required<TurnOptions>;
}

/** Validates `new Memlock(options)`; throws before anything is opened. */
export function resolveMemlockOptions(options: unknown): ResolvedMemlockOptions {
  if (options === undefined) options = {};
  if (!isPlainObject(options)) throw new TypeError(`Expected \`options\` to be an object, got ${describe(options)}`);
  checkKnownOptions(options, MEMLOCK_OPTION_NAMES, 'Memlock options');
  const o = options as MemlockOptions;
  const prefix = o.prefix ?? defaults.prefix;
  if (typeof prefix !== 'string') throw new TypeError(`Expected \`prefix\` to be a string, got ${describe(prefix)}`);
  if (/[\s\p{Cc}]/u.test(prefix)) throw new RangeError('Expected `prefix` to hold no whitespace or control characters');
  // Leave room for 'sha256:' + 64 hex digits so every key fits in 250 bytes.
  if (Buffer.byteLength(prefix) > 250 - 71) throw new RangeError('Expected `prefix` to be at most 179 bytes');
  const { leaseMs, heartbeatMs } = checkLease(o.leaseMs ?? defaults.leaseMs, o.heartbeatMs ?? defaults.heartbeatMs);
  const timeoutMs = checkNumber('timeoutMs', o.timeoutMs ?? defaults.timeoutMs, 1, 60_000);
  for (const name of ['username', 'password'] as const) {
    if (o[name] !== undefined && typeof o[name] !== 'string') {
      throw new TypeError(`Expected \`${name}\` to be a string, got ${describe(o[name])}`);
    }
  }
  if (o.ref !== undefined && typeof o.ref !== 'boolean')
    throw new TypeError(`Expected \`ref\` to be a boolean, got ${describe(o.ref)}`);
  let servers: string[] = [];
  const serversFromEnv = o.servers === undefined && process.env.MEMCACHE_SERVERS !== undefined;
  if (o.servers !== undefined) {
    const list = typeof o.servers === 'string' ? o.servers.split(',') : o.servers;
    if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) {
      throw new TypeError(`Expected \`servers\` to be a string or an array of strings, got ${describe(o.servers)}`);
    }
    servers = (list as string[]).map((s) => s.trim()).filter((s) => s !== '');
    if (servers.length === 0) throw new RangeError('Expected `servers` to name at least one server');
  } else if (o.client === undefined && o.lockClient === undefined) {
    servers = (process.env.MEMCACHE_SERVERS ?? defaults.servers)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  }
  if (o.client !== undefined && !isMemjsClient(o.client)) {
    throw new TypeError('Expected `client` to be a memjs Client (with a `servers` array)');
  }
  const protocol = o.protocol ?? 'binary';
  if (typeof protocol !== 'string')
    throw new TypeError(`Expected \`protocol\` to be 'binary', 'meta' or 'text', got ${describe(protocol)}`);
  if (protocol !== 'binary' && protocol !== 'meta' && protocol !== 'text')
    throw new RangeError(`Expected \`protocol\` to be 'binary', 'meta' or 'text', got ${describe(protocol)}`);
  const tls = o.tls ?? false;
  if (typeof tls !== 'boolean' && !isPlainObject(tls)) {
    throw new TypeError(`Expected \`tls\` to be a boolean or tls.connect options, got ${describe(tls)}`);
  }
  const username = o.username ?? process.env.MEMCACHE_USERNAME;
  const password = o.password ?? process.env.MEMCACHE_PASSWORD;
  const usesOwnConnections = o.lockClient === undefined && o.client === undefined;
  if (usesOwnConnections) {
    // Throws the RangeError naming `servers` for a bad entry.
    const specs = servers.map((spec) => {
      try {
        return parseServer(spec);
      } catch (error) {
        if (!serversFromEnv || !(error instanceof RangeError)) throw error;
        throw new RangeError(error.message.replace('`servers`', '`servers` (from MEMCACHE_SERVERS)'));
      }
    });
    if (protocol !== 'binary' && (username !== undefined || specs.some((spec) => spec.username !== undefined))) {
      const from =
        o.username !== undefined
          ? 'the `username` option'
          : username !== undefined
            ? 'MEMCACHE_USERNAME'
            : 'a `servers` entry';
      throw new RangeError(
        `Expected \`protocol\` to be 'binary' with SASL credentials (from ${from}): memcached has SASL only on the binary protocol`,
      );
    }
  } else if (o.lockClient === undefined) {
    // A caller's memjs client: binary protocol, no TLS, its own credentials.
    if (o.protocol !== undefined && o.protocol !== 'binary')
      throw new RangeError(
        "Expected `protocol` to be 'binary' with a memjs `client` (memjs speaks only the binary protocol)",
      );
    if (tls !== false) throw new RangeError('Expected `tls` to be false with a memjs `client` (memjs has no TLS)');
  }
  const turn = resolveTurn(o.turn);
  return {
    prefix,
    leaseMs,
    heartbeatMs,
    timeoutMs,
    servers,
    username,
    password,
    protocol,
    tls,
    ref: o.ref ?? true,
    turn,
  };
}

/** Validates `turn` (instance option). */
function resolveTurn(turn: unknown): Required<TurnOptions> {
  if (turn === undefined) return defaults.turn;
  if (!isPlainObject(turn)) throw new TypeError(`Expected \`turn\` to be an object, got ${describe(turn)}`);
  const t = turn as TurnOptions;
  const maxMs = checkNumber('turn.maxMs', t.maxMs ?? defaults.turn.maxMs, 0, 60_000);
  const maxHandoffs = checkNumber('turn.maxHandoffs', t.maxHandoffs ?? defaults.turn.maxHandoffs, 0, 1_000_000);
  if (!Number.isInteger(maxHandoffs))
    throw new RangeError(`Expected \`turn.maxHandoffs\` to be an integer, got ${maxHandoffs}`);
  return Object.freeze({ maxMs, maxHandoffs });
}

function isMemjsClient(value: unknown): boolean {
  return isPlainObjectLike(value) && Array.isArray((value as { servers?: unknown }).servers);
}

function isPlainObjectLike(value: unknown): value is object {
  return typeof value === 'object' && value !== null;
}

/**
 * Largest clientId in UTF-8 bytes. The id is stored in the entry's value; an
 * id is a name (host, pid, worker), and a bound well under memcached's item
 * size keeps an oversized id an input error (RangeError, before any traffic)
 * rather than a server error that looks like an outage.
 */
export const MAX_CLIENT_ID_BYTES = 4096;

/** Validates key, clientId and fn in the order API.md gives. */
export function checkCallArgs(key: unknown, clientId: unknown): asserts key is string {
  if (typeof key !== 'string') throw new TypeError(`Expected \`key\` to be a string, got ${describe(key)}`);
  if (key === '') throw new TypeError('Expected `key` to be a non-empty string');
  if (typeof clientId !== 'string')
    throw new TypeError(`Expected \`clientId\` to be a string, got ${describe(clientId)}`);
  if (clientId === '') throw new EmptyClientIdError();
  // A UTF-16 unit is at most 3 UTF-8 bytes: short ids skip the byte count.
  if (clientId.length * 3 > MAX_CLIENT_ID_BYTES && Buffer.byteLength(clientId) > MAX_CLIENT_ID_BYTES) {
    throw new RangeError(
      `Expected \`clientId\` to be at most ${MAX_CLIENT_ID_BYTES} bytes in UTF-8, got ${Buffer.byteLength(clientId)}`,
    );
  }
  // The id is stored as UTF-8 and compared after decoding: a lone surrogate
  // would come back as U+FFFD and the holder would no longer recognise itself.
  if (!clientId.isWellFormed())
    throw new TypeError('Expected `clientId` to be well-formed Unicode (it holds a lone surrogate)');
}

/** Resolves per-call options against the instance settings. */
export function resolveLockOptions(options: unknown, instance: ResolvedMemlockOptions): ResolvedLockOptions {
  if (options === undefined || options === null) options = {};
  if (!isPlainObject(options)) throw new TypeError(`Expected \`options\` to be an object, got ${describe(options)}`);
  checkKnownOptions(options, LOCK_OPTION_NAMES, 'lock options');
  const o = options as LockOptions;
  const { leaseMs, heartbeatMs } = checkLease(
    o.leaseMs ?? instance.leaseMs,
    o.heartbeatMs ??
      (o.leaseMs === undefined ? instance.heartbeatMs : Math.min(instance.heartbeatMs, (o.leaseMs as number) / 2)),
  );
  const stealAfterMs =
    o.stealAfterMs === undefined ? undefined : checkNumber('stealAfterMs', o.stealAfterMs, 0, Number.MAX_SAFE_INTEGER);
  const signal = o.signal ?? undefined;
  if (signal !== undefined && !isSignalLike(signal)) {
    throw new TypeError(`Expected \`signal\` to be an AbortSignal, got ${describe(signal)}`);
  }
  let wait: Required<WaitOptions> | undefined;
  if (o.wait === true) {
    wait = { ...defaults.wait };
  } else if (o.wait !== undefined && o.wait !== false) {
    if (!isPlainObject(o.wait))
      throw new TypeError(`Expected \`wait\` to be a boolean or an object, got ${describe(o.wait)}`);
    checkKnownOptions(o.wait, WAIT_OPTION_NAMES, 'the `wait` options');
    const w = o.wait as WaitOptions;
    const minDelayMs = checkNumber('wait.minDelayMs', w.minDelayMs ?? defaults.wait.minDelayMs, 0, 3_600_000);
    const maxDelayMs = checkNumber(
      'wait.maxDelayMs',
      w.maxDelayMs ?? Math.max(defaults.wait.maxDelayMs, minDelayMs),
      0,
      3_600_000,
    );
    if (maxDelayMs < minDelayMs)
      throw new RangeError(`Expected \`wait.maxDelayMs\` (${maxDelayMs}) to be >= wait.minDelayMs (${minDelayMs})`);
    wait = {
      timeoutMs: checkNumber(
        'wait.timeoutMs',
        w.timeoutMs ?? defaults.wait.timeoutMs,
        0,
        Number.POSITIVE_INFINITY,
        true,
      ),
      minDelayMs,
      maxDelayMs,
    };
  }
  const holdAfterMs = o.holdAfterMs === undefined ? 0 : checkNumber('holdAfterMs', o.holdAfterMs, 0, MAX_LEASE_MS);
  if (o.failOpen !== undefined && typeof o.failOpen !== 'boolean')
    throw new TypeError(`Expected \`failOpen\` to be a boolean, got ${describe(o.failOpen)}`);
  return {
    leaseMs,
    heartbeatMs,
    ttlSeconds: leaseTtlSeconds(leaseMs),
    stealAfterMs,
    wait,
    signal,
    holdTtlSeconds: holdTtlSeconds(holdAfterMs),
    failOpen: o.failOpen === true,
  };
}

/** Duck-typed so signals from the `abort-controller` package are accepted. */
export function isSignalLike(value: unknown): value is AbortSignal {
  return (
    isPlainObjectLike(value) &&
    typeof (value as AbortSignal).aborted === 'boolean' &&
    typeof (value as AbortSignal).addEventListener === 'function' &&
    typeof (value as AbortSignal).removeEventListener === 'function'
  );
}

/** The abort reason of a signal; polyfilled signals without `reason` get an AbortError. */
export function reasonOf(signal: AbortSignal): unknown {
  return (signal as { reason?: unknown }).reason ?? new DOMException('This operation was aborted', 'AbortError');
}
