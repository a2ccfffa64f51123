/**
 * memcached's clock, read and made to skip a second on purpose (issue 16,
 * finding 1).
 *
 * memcached keeps `current_time` in whole seconds: a timer on its main
 * thread runs every second and sets it to floor(CLOCK_MONOTONIC seconds)
 * minus a constant. The timer is re-armed for 1 s after each run, so every
 * tick lands a little late and the tick's phase within the second drifts;
 * when it crosses a whole second, `current_time` advances by 2 at once, and
 * an entry written with TTL n (expiring when `current_time` reaches
 * written + n) can be gone after about n - 2 s.
 *
 * {@link skipSecond} provokes that on demand: it finds the tick's phase by
 * polling `stats` (`time` is memcached's `current_time` as unix seconds,
 * `uptime` its seconds since start; both move at each tick), then SIGSTOPs
 * memcached from just before a tick until just after the next whole second
 * of CLOCK_MONOTONIC, and SIGCONTs it: the delayed tick then reads a
 * second that is 2 past the one the previous tick read.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MemcachedProcess } from '../../helpers/memcached.js';

/**
 * CLOCK_MONOTONIC in ms (µs resolution). memcached's whole seconds are this
 * clock's whole seconds, so tick phases are read on it; `performance.now()`
 * runs on the same clock but from an origin that is not a whole second.
 */
export function monoMs(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

/**
 * One persistent text-protocol connection; one request at a time, so each
 * reply is read exactly when it arrives (no connect per request).
 */
export class TextConnection {
  #buffer = '';
  #waiting: { complete: (reply: string) => number; resolve: (reply: string) => void } | undefined;
  #failed: Error | undefined;
  #onFail: ((error: Error) => void) | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      this.#deliver();
    });
    const fail = (error: Error): void => {
      this.#failed ??= error;
      this.#onFail?.(this.#failed);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('memcached connection closed')));
  }

  /** Connects to `target`. */
  static async open(target: { host: string; port: number }): Promise<TextConnection> {
    const socket = net.connect({ host: target.host, port: target.port });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new TextConnection(socket);
  }

  #deliver(): void {
    const waiting = this.#waiting;
    if (waiting === undefined) return;
    const length = waiting.complete(this.#buffer);
    if (length < 0) return;
    const reply = this.#buffer.slice(0, length);
    this.#buffer = this.#buffer.slice(length);
    this.#waiting = undefined;
    waiting.resolve(reply);
  }

  /**
   * Sends `payload` and resolves with the reply once `complete` (given what
   * arrived so far) returns its length (-1: not complete yet). Rejects after
   * `timeoutMs`; a request to a paused server simply waits for the resume.
   */
  request(payload: string, complete: (reply: string) => number, timeoutMs = 5000): Promise<string> {
    if (this.#waiting) throw new Error('TextConnection: one request at a time');
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting = undefined;
        reject(new Error(`no reply to ${JSON.stringify(payload.split('\r\n')[0])} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (fn: () => void): void => {
        clearTimeout(timer);
        this.#onFail = undefined;
        fn();
      };
      this.#onFail = (error) => done(() => reject(error));
      this.#waiting = { complete, resolve: (reply) => done(() => resolve(reply)) };
      this.socket.write(payload);
      this.#deliver();
    });
  }

  /** `stats`: memcached's clock (`time`, `uptime`). */
  async clock(): Promise<{ time: number; uptime: number }> {
    const reply = await this.request('stats\r\n', untilLine('END'));
    const stat = (name: string): number => {
      const match = new RegExp(`^STAT ${name} (\\d+)\\r$`, 'm').exec(reply);
      if (!match) throw new Error(`stats without ${name}: ${reply.slice(0, 200)}`);
      return Number(match[1]);
    };
    return { time: stat('time'), uptime: stat('uptime') };
  }

  /** `add`: true when stored (the key was free). */
  async add(key: string, value: string, ttlSeconds: number, timeoutMs?: number): Promise<boolean> {
    const reply = await this.request(
      `add ${key} 0 ${ttlSeconds} ${Buffer.byteLength(value)}\r\n${value}\r\n`,
      firstLine,
      timeoutMs,
    );
    if (reply === 'STORED\r\n') return true;
    if (reply === 'NOT_STORED\r\n') return false;
    throw new Error(`add ${key}: ${reply.trim()}`);
  }

  /** `set` (unconditional). */
  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    const reply = await this.request(
      `set ${key} 0 ${ttlSeconds} ${Buffer.byteLength(value)}\r\n${value}\r\n`,
      firstLine,
    );
    if (reply !== 'STORED\r\n') throw new Error(`set ${key}: ${reply.trim()}`);
  }

  /** Whether `key` is present (`get`). */
  async has(key: string): Promise<boolean> {
    const reply = await this.request(`get ${key}\r\n`, untilLine('END'));
    return reply.startsWith('VALUE ');
  }

  /** Closes the socket. */
  async close(): Promise<void> {
    if (this.socket.closed) return;
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.destroy();
    });
  }
}

function firstLine(reply: string): number {
  const end = reply.indexOf('\r\n');
  return end < 0 ? -1 : end + 2;
}

function untilLine(last: string): (reply: string) => number {
  return (reply) => {
    if (reply.startsWith(`${last}\r\n`)) return last.length + 2;
    const end = reply.indexOf(`\r\n${last}\r\n`);
    if (end >= 0) return end + last.length + 4;
    // An error line ends the reply too.
    return /^(ERROR|CLIENT_ERROR|SERVER_ERROR)/.test(reply) ? firstLine(reply) : -1;
  };
}

/** One reading of memcached's clock, with when it was asked and answered ({@link monoMs}). */
export interface ClockReading {
  readonly time: number;
  readonly uptime: number;
  readonly sentAt: number;
  readonly receivedAt: number;
}

async function read(conn: TextConnection): Promise<ClockReading> {
  const sentAt = monoMs();
  const { time, uptime } = await conn.clock();
  return { time, uptime, sentAt, receivedAt: monoMs() };
}

/** A tick seen: `time` after it, and when it ran (±`uncertaintyMs`, on {@link monoMs}). */
export interface Tick {
  readonly time: number;
  readonly at: number;
  readonly uncertaintyMs: number;
}

/** Its phase: where in a second of CLOCK_MONOTONIC the tick ran, in [0, 1). */
export function phaseOf(at: number): number {
  return (at % 1000) / 1000;
}

/**
 * Polls `stats` (every `pollMs`, 0 = back to back) until `time` moves;
 * rejects if it does not before `until`.
 */
async function watchTick(conn: TextConnection, pollMs: number, until: number): Promise<Tick> {
  let last = await read(conn);
  for (;;) {
    const now = await read(conn);
    if (now.time !== last.time) {
      return {
        time: now.time,
        at: (last.sentAt + now.receivedAt) / 2,
        uncertaintyMs: (now.receivedAt - last.sentAt) / 2,
      };
    }
    if (now.receivedAt > until)
      throw new Error(`memcached's clock did not tick by ${until.toFixed(0)} (stuck at ${now.time})`);
    last = now;
    if (pollMs > 0) await sleep(pollMs);
  }
}

/** Sleeps until `at` ({@link monoMs}), then spins the last stretch: a timer alone may wake a few ms late. */
async function until(at: number, spinMs = 15): Promise<void> {
  const left = at - monoMs() - spinMs;
  if (left > 0) await sleep(left);
  while (monoMs() < at) {
    // spin
  }
}

/** Nominal time between ticks: 1 s plus the few ms each re-arm adds (measured 1001-1006 ms here). */
const PERIOD_MS = 1002;

/**
 * The tick after `near` (a predicted tick time), precisely: polls back to
 * back from a little before it. `near` = undefined: find any tick first
 * (polling every few ms), then the next one precisely.
 */
export async function findTick(conn: TextConnection, near?: number): Promise<Tick> {
  const from = near ?? (await watchTick(conn, 4, monoMs() + 2 * PERIOD_MS)).at + PERIOD_MS;
  await until(from - 40, 0);
  return watchTick(conn, 0, from + 500);
}

/** How a pause of memcached went. */
export interface PauseOutcome {
  /** `stats` just before SIGSTOP and just after SIGCONT (and the tick it let run). */
  readonly before: ClockReading;
  readonly after: ClockReading;
  /** `after.time - before.time`: 2 = the clock skipped a second. */
  readonly delta: number;
  readonly stoppedAt: number;
  readonly continuedAt: number;
  /** The phase of the tick the pause was aimed at (predicted). */
  readonly phase: number;
}

/**
 * SIGSTOPs memcached at `stopAt` and SIGCONTs it at `continueAt` (both on
 * {@link monoMs}), reading its clock right before and a moment after.
 * Rejects, leaving memcached running, if it cannot stop in time.
 */
async function pauseAcross(
  mc: MemcachedProcess,
  conn: TextConnection,
  plan: { readonly stopAt: number; readonly continueAt: number; readonly tickAt: number },
): Promise<PauseOutcome> {
  await until(plan.stopAt);
  const before = await read(conn);
  if (before.receivedAt > plan.tickAt - 10)
    throw new Miss(`too late to stop before the tick (${(before.receivedAt - plan.tickAt).toFixed(1)} ms)`);
  const stoppedAt = monoMs();
  await mc.pause(); // SIGSTOP is sent first thing; then it waits for /proc to show it
  try {
    await until(plan.continueAt, 2);
  } finally {
    await mc.resume();
  }
  const continuedAt = monoMs();
  // The delayed tick runs on memcached's main thread right after SIGCONT; a
  // request on a worker thread may be answered just before it.
  await sleep(20);
  const after = await read(conn);
  return { before, after, delta: after.time - before.time, stoppedAt, continuedAt, phase: phaseOf(plan.tickAt) };
}

/** An attempt whose timing missed (the machine was too slow to act in time); it says nothing about memcached. */
export class Miss extends Error {
  override name = 'Miss';
}

/** Options of {@link skipSecond}. */
export interface SkipOptions {
  /** Runs `leadMs` before the pause, to write what the skip should act on. */
  readonly beforePause?: () => Promise<void>;
  /** Default 250. */
  readonly leadMs?: number;
}

/** A provoked skip: the control pause (if the phase had to be moved) and the skip itself. */
export interface SkipOutcome {
  /** A pause that ended inside the tick's own second (moves the phase): must advance the clock by 1. */
  readonly control: PauseOutcome | undefined;
  readonly skip: PauseOutcome;
  /** delta 2 within less than a second: one tick advanced the clock by 2 (two ticks are >= 1 s apart). */
  readonly skipped: boolean;
}

/** Held before the tick (ms): the tick is predicted to within a few ms, a loaded machine wakes late. */
const GUARD_MS = 80;
/** Held past the whole second (ms). */
const PAST_MS = 30;
/** Below this phase the skip pause would be long; the phase is moved to {@link TARGET_PHASE} first. */
const MIN_PHASE = 0.8;
const TARGET_PHASE = 0.85;

/**
 * Makes memcached's clock skip a second, once: finds its tick, moves the
 * tick's phase late into the second if needed (a pause that ends inside the
 * same second: the control, which must not skip), calls `beforePause`, then
 * pauses memcached from {@link GUARD_MS} before the next tick until
 * {@link PAST_MS} after the next whole second. Throws {@link Miss} when the
 * timing could not be kept (the caller may try again); the outcome's
 * `skipped` says whether memcached's clock did skip.
 */
export async function skipSecond(
  mc: MemcachedProcess,
  conn: TextConnection,
  options: SkipOptions = {},
): Promise<SkipOutcome> {
  let tick = await findTick(conn);
  let control: PauseOutcome | undefined;
  if (phaseOf(tick.at) < MIN_PHASE) {
    const tickAt = tick.at + PERIOD_MS;
    const second = Math.floor(tickAt / 1000) * 1000;
    control = await pauseAcross(mc, conn, {
      stopAt: tickAt - GUARD_MS,
      continueAt: second + TARGET_PHASE * 1000,
      tickAt,
    });
    // The delayed tick ran at the resume; the next one comes a period later.
    tick = await findTick(conn, control.continuedAt + PERIOD_MS);
  }
  const tickAt = tick.at + PERIOD_MS;
  const stopAt = tickAt - GUARD_MS;
  const continueAt = Math.ceil(tickAt / 1000) * 1000 + PAST_MS;
  const leadMs = options.leadMs ?? 250;
  await until(stopAt - leadMs, 0);
  await options.beforePause?.();
  if (monoMs() > stopAt - 5)
    throw new Miss(`beforePause ended ${(monoMs() - stopAt).toFixed(1)} ms after the planned stop`);
  const skip = await pauseAcross(mc, conn, { stopAt, continueAt, tickAt });
  return { control, skip, skipped: skip.delta === 2 && skip.after.receivedAt - skip.before.sentAt < 1000 };
}

/** One line for logs. */
export function describePause(p: PauseOutcome): string {
  return (
    `tick phase ${p.phase.toFixed(3)}, paused ${(p.continuedAt - p.stoppedAt).toFixed(0)} ms ` +
    `(stop at phase ${phaseOf(p.stoppedAt).toFixed(3)}, continue at ${phaseOf(p.continuedAt).toFixed(3)}): ` +
    `time ${p.before.time} -> ${p.after.time} (+${p.delta}), uptime ${p.before.uptime} -> ${p.after.uptime}`
  );
}
