/**
 * Connection settings of the examples and the configuration the verifier
 * hands its child processes (JSON in one environment variable).
 */
import pg from 'pg';

/** A pg pool on the examples' database (PG* variables honoured; default 127.0.0.1:5432, db `test`). */
export function examplePool(max = 10): pg.Pool {
  const pool = new pg.Pool({
    host: process.env['PGHOST'] ?? '127.0.0.1',
    port: Number(process.env['PGPORT'] ?? 5432),
    database: process.env['PGDATABASE'] ?? 'test',
    user: process.env['PGUSER'] ?? 'postgres',
    password: process.env['PGPASSWORD'],
    max,
  });
  // An idle client whose server connection dies emits 'error' on the pool; without a listener that would crash the process.
  pool.on('error', () => undefined);
  return pool;
}

/** RabbitMQ URL (AMQP_URL, default guest@127.0.0.1:5672). */
export const amqpUrl = process.env['AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';

/** What the verifier's child processes need. */
export interface ChildConfig {
  readonly schema: string;
  readonly queue: string;
  readonly memcached: string;
  readonly steps: number;
  /** Consumer: probability of nack(requeue) before handling a delivery. */
  readonly nackProbability: number;
  /** Consumer: probability of SIGKILLing itself inside a step (after its effect was written, before commit). */
  readonly crashProbability: number;
  /** Consumer: the AMQP connection is destroyed after a random time in this range (ms); [0, 0] = never. */
  readonly connectionKillMs: readonly [number, number];
  /** Consumer: random pause inside a step (upper bound, ms). */
  readonly workMs: number;
  /** Relay: copies of every message (inclusive range). */
  readonly copies: readonly [number, number];
  /** Relay: share of the extra copies published late, and the delay range (ms). */
  readonly lateShare: number;
  readonly lateMs: readonly [number, number];
  /** Relay: probability of SIGKILLing itself after the broker confirmed a batch and before marking it sent. */
  readonly relayKillProbability: number;
  /** Relay: the first kill not before this many ms after start (so each incarnation makes progress). */
  readonly relayMinLifeMs: number;
  /** Row lease (ms) and attempts cap of the consumers' Tasks. */
  readonly leaseMs: number;
  readonly maxAttempts: number;
  /** Consumers' `holdAfterMs` (memlock completed marker), 0 = off. */
  readonly holdAfterMs: number;
}

export const CONFIG_ENV = 'MEMLOCK_TASKS_VERIFY';

/** Reads the child configuration from the environment. */
export function childConfig(): ChildConfig {
  const raw = process.env[CONFIG_ENV];
  if (raw === undefined) throw new Error(`${CONFIG_ENV} is not set: this file is started by the verifier`);
  return JSON.parse(raw) as ChildConfig;
}

/** Messages children send to the verifier. */
export type ChildMessage =
  | { type: 'result'; status: string; reason: string; stoppedBy: string | null; tx: number; filtered: boolean }
  | { type: 'nacked' }
  | { type: 'connection-killed' }
  | { type: 'crash' }
  | { type: 'lease-overwritten' }
  | { type: 'relay-kill' }
  | { type: 'published'; rows: number; copies: number; pendingLate: number };

/** Uniform integer in [lo, hi]. */
export function between(lo: number, hi: number): number {
  return lo + Math.floor(Math.random() * (hi - lo + 1));
}

/** Sends a message to the verifier (no-op when started on its own); `then` runs once it was written. */
export function sendToParent(m: ChildMessage, then?: () => void): void {
  if (process.send) process.send(m, undefined, undefined, () => then?.());
  else then?.();
}
