/**
 * `memlock/testing`: an in-memory memcache stand-in for unit tests of code
 * that uses memlock, so they need no memcached. It behaves like memcached
 * where memlock relies on it, and no further:
 *
 * - `add`, `get` with CAS, CAS-checked `set` and `delete`; one CAS counter
 *   per server, starting at 1 (and again at 1 after `restart()`); a CAS of 0
 *   makes a write unconditional, as in memcached.
 * - Expiry in whole seconds on memcached's whole-second clock: the server's
 *   `current_time` moves on a one-second tick, and an entry written with
 *   TTL n expires when that counter has moved n times. As on memcached,
 *   the tick can be late: `tickDriftMs` makes every tick that much later
 *   than the one before (memcached re-arms its timer after it runs: a few
 *   ms), so the tick phase crosses a whole second now and then and the
 *   clock jumps 2 s at once; `skipSecond()` makes that happen at the next
 *   tick. An entry written just before such a jump may vanish as soon as
 *   n-2 s after the write (n-1 s with ticks on time). TTL 0 never expires;
 *   above 30 days a TTL is an absolute unix time.
 * - Faults: `evict()`/`flush()` (entries vanish), `restart()` (entries gone,
 *   CAS counter back to 1, connections replaced), `unreachable()` (requests
 *   refused before anything is sent: not applied), `slow()` (answers come
 *   late; past the client's `timeoutMs` a request fails as "maybe applied",
 *   and a write is still applied when its late answer would have come).
 *
 * Time is the stand-in's clock (`performance.now()` by default, so fake
 * timers that fake `performance` drive it) plus whatever `advance(ms)` added.
 * `advance()` moves only the server's clock: memlock's own timers do not
 * move, exactly as when a real server's entries expire behind a holder's back.
 *
 * It is a test double for unit tests, not a cache: memlock's own test suite
 * runs the same core tests against it and against a real memcached.
 */
import type { Entry, LockClient, WriteResult } from './client.js';
import { MemcacheUnavailableError } from './errors.js';
import { Memlock } from './memlock.js';
import type { MemlockOptions } from './options.js';

/** memcached reads an expiry above this many seconds as an absolute unix time. */
const REALTIME_MAXDELTA = 30 * 24 * 60 * 60;
/** memcached's key length limit in bytes. */
const MAX_KEY_BYTES = 250;
/** memcached's default item size limit (`-I 1m`), value and overhead together. */
const MAX_ITEM_BYTES = 1024 * 1024;
/** Binary-protocol statuses the stand-in answers with when memcached would refuse. */
const STATUS_TOO_LARGE = 0x03;
const STATUS_INVALID = 0x04;
/**
 * How often a stand-in Memlock that keeps the process alive only while it
 * holds a lock looks whether it still holds one: an idle instance whose
 * `close()` was forgotten lets the process exit at most this much later.
 */
const HELD_CHECK_MS = 100;

/** Options of `new MemcacheStandIn()`. */
export interface MemcacheStandInOptions {
  /** Name reported as the server ('host:port' in a real deployment). @default 'stand-in:11211' */
  readonly name?: string;
  /**
   * The clock, in ms; the server's whole-second clock ticks on it, and slow
   * answers and timeouts use `setTimeout`. @default () => performance.now()
   */
  readonly now?: () => number;
  /**
   * How much later than one second after the previous one each tick of the
   * server's whole-second clock lands (memcached: a few ms). With drift the
   * clock jumps 2 s at once about every `1000 / tickDriftMs` s. 0 to 1000.
   * @default 0 (ticks exactly one second apart)
   */
  readonly tickDriftMs?: number;
}

/** Options of `standIn.client()`. */
export interface StandInClientOptions {
  /**
   * Whether the client keeps the process alive until `close()`, as an open
   * memcache connection does (memlock's heartbeat timer does not, so a test
   * that only waits for a held lock's signal needs something that does).
   * memlock never closes a `lockClient` it was given: with `ref: true`, close
   * the client yourself. @default false (`standIn.memlock()`: only while it
   * holds a lock, see there)
   */
  readonly ref?: boolean;
  /**
   * Deadline of each operation, like memlock's `timeoutMs`: a request not
   * answered by then (see `slow()`) fails with `MemcacheUnavailableError`
   * as "maybe applied". @default 500
   */
  readonly timeoutMs?: number;
}

/** An entry as stored, for assertions (`standIn.peek()`). */
export interface StandInEntry {
  readonly value: Buffer;
  readonly cas: bigint;
  /** Stand-in clock time (ms) at which the entry expires; `Infinity` for TTL 0. */
  readonly expiresAt: number;
  /** Remaining TTL as memcached reports it (`mg <key> t`): whole seconds, -1 for none. */
  readonly ttlSeconds: number;
}

/** Requests that reached the server (refused ones do not count), by operation. */
export interface StandInOps {
  add: number;
  get: number;
  set: number;
  delete: number;
}

interface Stored {
  value: Buffer;
  cas: bigint;
  /** Server second at which the entry counts as expired; 0 = never. */
  exptime: number;
}

/** How a request failed; decides whether memlock may assume it was not applied. */
type Failure = 'refused' | 'timeout' | 'reset' | 'closed';

/**
 * The error a stand-in request rejects with, following memlock's own
 * transport: `mayHaveApplied` is `false` when the request never left
 * (connection refused, client closed) and `true` when it was sent and no
 * answer came (timeout, connection reset): `isAmbiguous()` in protocol.ts
 * reads it. The cause carries the usual `code`, as a socket error would.
 */
function unavailable(server: string, op: string, failure: Failure, timeoutMs = 0): MemcacheUnavailableError {
  switch (failure) {
    case 'refused':
      return new MemcacheUnavailableError(`memcache ${op} failed (${server}): connect ECONNREFUSED`, {
        server,
        mayHaveApplied: false,
        cause: Object.assign(new Error(`connect ECONNREFUSED ${server}`), { code: 'ECONNREFUSED' }),
      });
    case 'timeout':
      return new MemcacheUnavailableError(
        `memcache operation timed out after ${timeoutMs} ms (${server}): operation timed out`,
        {
          server,
          mayHaveApplied: true,
          cause: Object.assign(new Error('operation timed out'), { code: 'ETIMEDOUT' }),
        },
      );
    case 'reset':
      return new MemcacheUnavailableError(`memcache ${op} failed (${server}): connection reset`, {
        server,
        mayHaveApplied: true,
        cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }),
      });
    case 'closed':
      return new MemcacheUnavailableError('memlock client is closed', { server, mayHaveApplied: false });
  }
}

/** memcached answered with an error status: the request was not applied. */
function rejected(server: string, op: string, status: number, text: string): MemcacheUnavailableError {
  return new MemcacheUnavailableError(
    `memcache ${op} failed with status 0x${status.toString(16)} (${server}): ${text}`,
    {
      server,
      mayHaveApplied: false,
      cause: Object.assign(new Error(text), { status }),
    },
  );
}

/**
 * An in-memory memcache server for unit tests, with fault injection. Plug it
 * into memlock with `standIn.memlock(options)` or
 * `new Memlock({ lockClient: standIn.client(), ... })`; each `client()` is
 * one more process talking to the same server.
 *
 * ```ts
 * const memcache = new MemcacheStandIn();
 * const memlock = memcache.memlock({ leaseMs: 4000, heartbeatMs: 500 });
 * ```
 */
export class MemcacheStandIn {
  /** The server's name, as `serverOf()` and errors report it. */
  readonly name: string;
  /** Requests that reached the server, by operation (an `addThenGet` counts one add and one get). */
  readonly ops: StandInOps = { add: 0, get: 0, set: 0, delete: 0 };

  readonly #now: () => number;
  readonly #entries = new Map<string, Stored>();
  #offset = 0;
  #startedAt: number;
  /** Interval between two ticks of the whole-second clock, in ms. */
  readonly #tickMs: number;
  /** Set by `skipSecond()`: the clock reads `value` until stand-in time `until`. */
  #stalled: { readonly value: number; readonly until: number } | undefined;
  #cas = 0n;
  /** Bumped when every connection breaks (restart, unreachable): clients then use a new generation. */
  #epoch = 0;
  #unreachable = false;
  #delayMs = 0;
  /** Requests being answered slowly; failed by `restart()` and `unreachable()`. */
  readonly #inFlight = new Set<() => void>();

  constructor(options: MemcacheStandInOptions = {}) {
    if (options === null || typeof options !== 'object') throw new TypeError('Expected `options` to be an object');
    if (options.name !== undefined && typeof options.name !== 'string')
      throw new TypeError('Expected `name` to be a string');
    if (options.now !== undefined && typeof options.now !== 'function')
      throw new TypeError('Expected `now` to be a function');
    this.name = options.name ?? 'stand-in:11211';
    if (
      options.tickDriftMs !== undefined &&
      (typeof options.tickDriftMs !== 'number' || !(options.tickDriftMs >= 0 && options.tickDriftMs <= 1000))
    )
      throw new RangeError(
        `Expected \`tickDriftMs\` to be a number from 0 to 1000, got ${String(options.tickDriftMs)}`,
      );
    this.#now = options.now ?? (() => performance.now());
    this.#tickMs = 1000 + (options.tickDriftMs ?? 0);
    this.#startedAt = this.#now();
  }

  /** The stand-in clock in ms: `now()` plus everything `advance()` added. */
  get time(): number {
    return this.#now() + this.#offset;
  }

  /** A new connection to this server, as memlock's `lockClient`. */
  client(options: StandInClientOptions = {}): LockClient {
    return this.#client(options);
  }

  #client(options: StandInClientOptions, onActivity?: () => void): StandInClient {
    const timeoutMs = options.timeoutMs ?? 500;
    if (typeof timeoutMs !== 'number' || !(timeoutMs > 0))
      throw new RangeError(`Expected \`timeoutMs\` to be a number > 0, got ${String(timeoutMs)}`);
    if (options.ref !== undefined && typeof options.ref !== 'boolean')
      throw new TypeError('Expected `ref` to be a boolean');
    return new StandInClient(this, timeoutMs, options.ref ?? false, onActivity);
  }

  /**
   * A `Memlock` on a new client of this server; its `close()` closes that
   * client too. `timeoutMs` becomes the client's operation deadline. `ref`:
   * by default the instance keeps the process alive while it holds a lock
   * (so a test that awaits a held lock's signal runs to its end; memlock's
   * heartbeat timer does not hold the process) and not while it is idle (so
   * a test file that forgets `close()` still exits); `true` holds it until
   * `close()`, as an open memcache connection does; `false` never.
   */
  memlock(options: Omit<MemlockOptions, 'lockClient' | 'servers' | 'client'> = {}): Memlock {
    let memlock: StandInMemlock | undefined = undefined; // set below; the client calls back into it
    const client = this.#client(
      { ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }), ref: options.ref === true },
      options.ref === undefined ? () => memlock?.keepAliveWhileHeld() : undefined,
    );
    memlock = new StandInMemlock({ ...options, lockClient: client }, client);
    return memlock;
  }

  /** Moves the server's clock forward by `ms` (entries whose time is up expire); memlock's timers do not move. */
  advance(ms: number): void {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0)
      throw new RangeError(`Expected \`ms\` to be a finite number >= 0, got ${String(ms)}`);
    this.#offset += ms;
  }

  /**
   * memcached's clock misses its next tick and jumps 2 s at the one after,
   * as when its late tick crosses a whole second (or the server is paused
   * across one): until then `current_time` stays where it is, so entries
   * written meanwhile are stamped up to 2 s stale and may expire as soon as
   * TTL - 2 s after the write.
   */
  skipSecond(): void {
    const value = this.#seconds();
    this.#stalled = { value, until: this.#tickTime(value + 2) };
  }

  /** Drops one entry (LRU eviction, or a delete by someone else). Returns whether it was there. */
  evict(key: string): boolean {
    return this.#live(key) !== undefined && this.#entries.delete(key);
  }

  /** Drops every entry (`flush_all`); the CAS counter goes on. */
  flush(): void {
    this.#entries.clear();
  }

  /**
   * A memcached restart: entries gone, CAS counter back to 1, the
   * whole-second clock starts again, every connection is replaced (clients
   * get a new generation) and requests in flight fail as "maybe applied".
   */
  restart(): void {
    this.#entries.clear();
    this.#cas = 0n;
    this.#startedAt = this.time;
    this.#stalled = undefined;
    this.#epoch++;
    this.#failInFlight();
  }

  /**
   * `true`: requests fail at once with `MemcacheUnavailableError` as a refused
   * connection does (nothing sent, nothing applied); connections break, and
   * requests in flight fail as "maybe applied". `false`: reachable again;
   * entries are as they were (a partition, not a restart).
   */
  unreachable(on = true): void {
    if (typeof on !== 'boolean') throw new TypeError('Expected `on` to be a boolean');
    if (on && !this.#unreachable) {
      this.#epoch++;
      this.#failInFlight();
    }
    this.#unreachable = on;
  }

  /**
   * Every request is answered `ms` late (0: at once). A request is applied
   * when its answer is sent; a client whose `timeoutMs` is shorter fails it
   * first with `MemcacheUnavailableError` ("maybe applied").
   */
  slow(ms: number): void {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0)
      throw new RangeError(`Expected \`ms\` to be a finite number >= 0, got ${String(ms)}`);
    this.#delayMs = ms;
  }

  /** The live entry under the memcache key `key` (prefix included), or `null`. */
  peek(key: string): StandInEntry | null {
    const stored = this.#live(key);
    if (stored === undefined) return null;
    const expiresAt = stored.exptime === 0 ? Infinity : this.#tickTime(stored.exptime);
    const ttlSeconds = stored.exptime === 0 ? -1 : stored.exptime - this.#seconds();
    return { value: Buffer.from(stored.value), cas: stored.cas, expiresAt, ttlSeconds };
  }

  /** Memcache keys of all live entries. */
  keys(): string[] {
    return [...this.#entries.keys()].filter((key) => this.#live(key) !== undefined);
  }

  /** An unconditional `set` by another party (a foreign write, say); returns the new CAS. */
  set(key: string, value: string | Buffer, ttlSeconds = 0): bigint {
    return this.#store(key, Buffer.from(value), ttlSeconds);
  }

  // --- The server side of a request; called by clients. ---

  /** @internal */
  get epoch(): number {
    return this.#epoch;
  }

  /** @internal Runs `apply` as the server would answer a request, or fails it. */
  request<T>(client: StandInClient, op: string, count: Array<keyof StandInOps>, apply: () => T): Promise<T> {
    if (this.#unreachable) return Promise.reject(unavailable(this.name, op, 'refused'));
    for (const name of count) this.ops[name]++;
    const delay = this.#delayMs;
    // At once: applied now, answered on the next microtask (never synchronously).
    if (delay === 0) {
      try {
        return Promise.resolve(apply());
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return new Promise<T>((resolve, reject) => {
      let answered = false;
      const finish = (): void => {
        answered = true;
        clearTimeout(answer);
        clearTimeout(deadline);
        this.#inFlight.delete(reset);
        client.forget(reset);
      };
      // The server died or the connection broke before it answered.
      const reset = (): void => {
        if (answered) return;
        finish();
        reject(unavailable(this.name, op, 'reset'));
      };
      const answer = setTimeout(() => {
        if (answered) return;
        finish();
        try {
          resolve(apply());
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      }, delay);
      const deadline = setTimeout(() => {
        if (answered) return;
        // The client gives up and drops the connection; the server still
        // applies the request when it gets to it (that is what makes a
        // timed-out write ambiguous).
        answered = true;
        clearTimeout(deadline);
        this.#inFlight.delete(reset);
        client.forget(reset);
        client.dropConnection();
        const late = setTimeout(
          () => {
            this.#inFlight.delete(cancelLate);
            try {
              apply();
            } catch {
              // Nobody waits for this answer any more.
            }
          },
          Math.max(0, delay - client.timeoutMs),
        );
        // Server-side work nobody waits for: it does not keep the process alive.
        late.unref?.();
        // A restart or a broken connection before then: never applied.
        const cancelLate = (): void => clearTimeout(late);
        this.#inFlight.add(cancelLate);
        reject(unavailable(this.name, op, 'timeout', client.timeoutMs));
      }, client.timeoutMs);
      this.#inFlight.add(reset);
      client.track(reset);
    });
  }

  /** @internal */
  doAdd(key: string, value: Buffer, ttlSeconds: number, conn: number): WriteResult {
    this.#check(key, value, 'add');
    if (this.#live(key) !== undefined) return { status: 'exists' };
    return { status: 'ok', cas: this.#store(key, value, ttlSeconds), conn };
  }

  /** @internal */
  doGet(key: string, conn: number): Entry | null {
    this.#check(key, undefined, 'get');
    const stored = this.#live(key);
    return stored === undefined ? null : { value: Buffer.from(stored.value), cas: stored.cas, conn };
  }

  /** @internal */
  doCasSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint, conn: number): WriteResult {
    this.#check(key, value, 'set');
    const stored = this.#live(key);
    // CAS 0 is an unconditional set in memcached.
    if (cas !== 0n) {
      if (stored === undefined) return { status: 'not_found' };
      if (stored.cas !== cas) return { status: 'exists' };
    }
    return { status: 'ok', cas: this.#store(key, value, ttlSeconds), conn };
  }

  /** @internal */
  doCasDelete(key: string, cas: bigint, conn: number): WriteResult {
    this.#check(key, undefined, 'delete');
    const stored = this.#live(key);
    if (stored === undefined) return { status: 'not_found' };
    if (cas !== 0n && stored.cas !== cas) return { status: 'exists' };
    this.#entries.delete(key);
    return { status: 'ok', cas: 0n, conn };
  }

  /**
   * memcached's `current_time`: whole seconds since the server started, from
   * 1, as set by the last tick (tick k lands at k * tickMs and sets the whole
   * seconds elapsed then), or held back by `skipSecond()`.
   */
  #seconds(): number {
    const time = this.time;
    const stalled = this.#stalled;
    if (stalled !== undefined) {
      if (time < stalled.until) return stalled.value;
      this.#stalled = undefined;
    }
    const ticks = Math.floor((time - this.#startedAt) / this.#tickMs);
    return Math.floor((ticks * this.#tickMs) / 1000) + 1;
  }

  /** Stand-in time of the first tick at which `current_time` reaches `value`. */
  #tickTime(value: number): number {
    const ticks = Math.ceil(((value - 1) * 1000) / this.#tickMs);
    const at = this.#startedAt + ticks * this.#tickMs;
    return this.#stalled === undefined ? at : Math.max(at, this.#stalled.until);
  }

  #live(key: string): Stored | undefined {
    const stored = this.#entries.get(key);
    if (stored === undefined) return undefined;
    if (stored.exptime !== 0 && stored.exptime <= this.#seconds()) {
      this.#entries.delete(key);
      return undefined;
    }
    return stored;
  }

  #store(key: string, value: Buffer, ttlSeconds: number): bigint {
    const cas = ++this.#cas;
    this.#entries.set(key, { value: Buffer.from(value), cas, exptime: this.#exptime(ttlSeconds) });
    return cas;
  }

  /** memcached's `realtime()`: relative seconds, or an absolute unix time above 30 days. */
  #exptime(ttlSeconds: number): number {
    if (ttlSeconds === 0) return 0;
    const now = this.#seconds();
    if (ttlSeconds < 0) return now; // already expired
    if (ttlSeconds > REALTIME_MAXDELTA) {
      const relative = ttlSeconds - Math.floor(Date.now() / 1000);
      return relative <= 0 ? now : now + relative;
    }
    return now + ttlSeconds;
  }

  #check(key: string, value: Buffer | undefined, op: string): void {
    if (key.length === 0 || Buffer.byteLength(key) > MAX_KEY_BYTES)
      throw rejected(this.name, op, STATUS_INVALID, 'Invalid arguments');
    if (value !== undefined && value.length + Buffer.byteLength(key) > MAX_ITEM_BYTES)
      throw rejected(this.name, op, STATUS_TOO_LARGE, 'Too large.');
  }

  #failInFlight(): void {
    for (const reset of [...this.#inFlight]) reset();
  }
}

/** A Memlock whose `close()` also closes its stand-in client (memlock leaves a `lockClient` open). */
class StandInMemlock extends Memlock {
  readonly #client: LockClient;
  #closing: Promise<void> | undefined;
  /** Holds the process while a lock is held (see `keepAliveWhileHeld`). */
  #keepAlive: ReturnType<typeof setTimeout> | undefined;

  constructor(options: MemlockOptions, client: LockClient) {
    super(options);
    this.#client = client;
  }

  /**
   * Called as each request of its client starts and settles (a lock may just
   * have been taken): holds the process until a check finds no lock held.
   */
  keepAliveWhileHeld(): void {
    if (this.#keepAlive !== undefined || this.#closing !== undefined) return;
    this.#keepAlive = setTimeout(() => {
      this.#keepAlive = undefined;
      if (this.heldCount > 0) this.keepAliveWhileHeld();
    }, HELD_CHECK_MS);
  }

  /** Same as `Memlock.close()` (idempotent: the same promise each time), then closes the client. */
  override close(): Promise<void> {
    this.#closing ??= super.close().then(() => {
      clearTimeout(this.#keepAlive);
      this.#keepAlive = undefined;
      return this.#client.close();
    });
    return this.#closing;
  }
}

/** One connection to a `MemcacheStandIn`: the `LockClient` memlock talks to. */
class StandInClient implements LockClient {
  readonly #server: MemcacheStandIn;
  readonly timeoutMs: number;
  #gen = 1;
  #epochSeen: number;
  #closed = false;
  readonly #pending = new Set<() => void>();
  /** Stands for the open socket that keeps a process alive (see `ref`). */
  #keepAlive: ReturnType<typeof setInterval> | undefined;

  /** Told as each request starts and settles (see `StandInMemlock.keepAliveWhileHeld`). */
  readonly #onActivity: (() => void) | undefined;

  constructor(server: MemcacheStandIn, timeoutMs: number, ref: boolean, onActivity?: () => void) {
    this.#server = server;
    this.timeoutMs = timeoutMs;
    this.#epochSeen = server.epoch;
    this.#onActivity = onActivity;
    if (ref) this.#keepAlive = setInterval(() => {}, 2 ** 31 - 1);
  }

  /** The current connection's generation: a new one after the server broke every connection. */
  #conn(): number {
    if (this.#epochSeen !== this.#server.epoch) {
      this.#epochSeen = this.#server.epoch;
      this.#gen++;
    }
    return this.#gen;
  }

  #request<T>(op: string, count: Array<keyof StandInOps>, apply: (conn: number) => T): Promise<T> {
    if (this.#closed) return Promise.reject(unavailable(this.#server.name, op, 'closed'));
    const conn = this.#conn();
    const request = this.#server.request(this, op, count, () => apply(conn));
    const onActivity = this.#onActivity;
    if (onActivity === undefined) return request;
    onActivity();
    // Told again once settled: a slow answer may grant the lock after the last check.
    void request.then(onActivity, onActivity);
    return request;
  }

  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    return this.#request('add', ['add'], (conn) => this.#server.doAdd(key, value, ttlSeconds, conn));
  }

  addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    // Pipelined: both are answered together, the read right after the add.
    return this.#request('add', ['add', 'get'], (conn) => {
      const add = this.#server.doAdd(key, value, ttlSeconds, conn);
      return { add, entry: this.#server.doGet(key, conn) };
    });
  }

  get(key: string): Promise<Entry | null> {
    return this.#request('get', ['get'], (conn) => this.#server.doGet(key, conn));
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Promise<WriteResult> {
    return this.#request('set', ['set'], (conn) => this.#server.doCasSet(key, value, ttlSeconds, cas, conn));
  }

  casDelete(key: string, cas: bigint): Promise<WriteResult> {
    return this.#request('delete', ['delete'], (conn) => this.#server.doCasDelete(key, cas, conn));
  }

  isCurrent(_key: string, conn: number): boolean {
    return conn === this.#conn();
  }

  serverOf(): string {
    return this.#server.name;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
    for (const reset of [...this.#pending]) reset();
  }

  /** @internal A request of this client is in flight. */
  track(reset: () => void): void {
    this.#pending.add(reset);
  }

  /** @internal */
  forget(reset: () => void): void {
    this.#pending.delete(reset);
  }

  /** @internal A request timed out: like memlock's transport, drop the connection (a new generation). */
  dropConnection(): void {
    this.#conn();
    this.#gen++;
  }
}
