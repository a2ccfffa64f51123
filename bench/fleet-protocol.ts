// The IPC messages between the fleet scenario (bench/scenarios/fleet.ts) and
// its worker processes (bench/fixtures/fleet-worker.ts). Plain JSON: fork's
// IPC channel serializes them.

import type { PoolConfig } from 'pg';
import type { Settings as RedlockSettings } from '@sesamecare-oss/redlock';

/**
 * 'redlock': retry every 10 ms +- 10 ms (the headline rival); 'redlock-200ms':
 * redlock's default retry, 200 ms +- 100 ms (an extra row, how it ships).
 */
export type FleetSubject = 'no-lock' | 'memlock' | 'redlock' | 'redlock-200ms';

/** Set up one subject in a worker process: pg connections, and the lock client of the subject. */
export interface FleetPrepare {
  type: 'prepare';
  subject: FleetSubject;
  processIndex: number;
  workers: number;
  rows: number;
  table: string;
  pg: PoolConfig;
  memcacheServers: string | null;
  redisUrl: string | null;
  redlockSettings: RedlockSettings;
  /** memlock's `wait.timeoutMs`; redlock's retry window is set to about the same. */
  waitTimeoutMs: number;
  /** redlock's lock duration (memlock uses its default lease). */
  leaseMs: number;
}

/** Wall-clock times (Date.now()) shared by all processes of a run. */
export interface FleetGo {
  type: 'go';
  /** Workers start here (the warm-up begins). */
  startAt: number;
  /** Commits, aborts and timeouts from here on count. */
  measureFrom: number;
  /** No new attempt starts after this; waits still pending are cut. */
  measureUntil: number;
}

export type FleetRequest = FleetPrepare | FleetGo | { type: 'exit' };

/** What one process counted in the measured window (and, for the sum check, in total). */
export interface FleetProcessResult {
  processIndex: number;
  /** Commits in the measured window. */
  commits: number;
  /** Commits including warm-up and stragglers: the hot rows must sum to these over all processes. */
  commitsTotal: number;
  /** Transactions rolled back on 40001 in the measured window. */
  abortedTx: number;
  abortedTxTotal: number;
  /** Every BEGIN sent, warm-up and stragglers included (committed, rolled back on 40001, failed): divide by commitsTotal. */
  dbTxTotal: number;
  /** CPU ms of this process (process.cpuUsage(), user + system) from the workers' start to their end: divide by commitsTotal. */
  cpuMs: number;
  /** ms from the start of the lock attempt to COMMIT, per commit in the window. */
  latencies: number[];
  /** Attempts that gave up waiting (LockNotAcquiredError / redlock's ExecutionError) in the window. */
  waitTimeouts: number;
  /** Ages (ms) of the attempts still in progress when the window closed. */
  pendingAgesMs: number[];
  errors: number;
  firstError: string | null;
}

export type FleetReply =
  | { type: 'hello'; pid: number }
  | { type: 'ready' }
  | { type: 'result'; result: FleetProcessResult }
  | { type: 'failed'; error: string };
