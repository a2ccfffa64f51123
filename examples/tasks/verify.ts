/**
 * The verifier: a few thousand chained tasks through consumer processes
 * under faults, then a count of every step's effect rows in PostgreSQL.
 *
 * Faults: each message published 2-32 times (some copies at once, some
 * late); consumers nack/requeue deliveries and lose their AMQP connection;
 * consumers are SIGKILLed from outside and kill themselves mid-step (lease
 * committed, effect written, not committed); memcached is restarted mid-run
 * (every lock is lost at once); the relay kills itself after the broker
 * confirmed a batch and before marking it sent.
 *
 * Every run uses its own PostgreSQL schema, RabbitMQ queue and memcached,
 * and removes them afterwards, so concurrent runs do not collide.
 */
import amqp from 'amqplib';
import type pg from 'pg';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock } from '../../src/index.js';
import { Tasks } from '../../src/tasks/index.js';
import { startMemcached } from '../../test/helpers/memcached.js';
import { createEffectsTable, startChains } from './chain.js';
import { amqpUrl, between, CONFIG_ENV, examplePool, type ChildConfig, type ChildMessage } from './env.js';

/** Options of {@link runVerifier}. */
export interface VerifyOptions {
  /** Chains (entities). @default 300 */
  readonly chains?: number;
  /** Steps per chain; tasks = chains * steps. @default 10 */
  readonly steps?: number;
  /** Consumer processes. @default 4 */
  readonly consumers?: number;
  /** Copies of every published message (inclusive). @default [2, 32] */
  readonly copies?: readonly [number, number];
  /** Share of extra copies published late, and their delay (ms). @default 0.25, [500, 4000] */
  readonly lateShare?: number;
  readonly lateMs?: readonly [number, number];
  /** Probability of a nack/requeue before handling. @default 0.02 */
  readonly nackProbability?: number;
  /** Probability a consumer SIGKILLs itself inside a step. @default 0.002 */
  readonly crashProbability?: number;
  /** A consumer's AMQP connection is destroyed after a random time in this range (ms). @default [3000, 8000] */
  readonly connectionKillMs?: readonly [number, number];
  /** The verifier SIGKILLs a random consumer every this many ms (random in range). @default [2500, 5000] */
  readonly consumerKillMs?: readonly [number, number];
  /** memcached is restarted when this share of the steps applied (one restart per entry). @default [0.3, 0.65] */
  readonly memcachedRestartsAt?: readonly number[];
  /** Probability the relay dies between confirm and marking sent, per batch. @default 0.2 */
  readonly relayKillProbability?: number;
  /**
   * The same for every relay after the first one dies. Each restart costs a
   * process start (seconds on a loaded machine), so a first relay that surely
   * dies and later ones that die less often keep the fault without stalling
   * the run. @default relayKillProbability
   */
  readonly laterRelayKillProbability?: number;
  /** The relay does not kill itself in its first this-many ms. @default 1500 */
  readonly relayMinLifeMs?: number;
  /** Row lease of the consumers (ms). @default 2000 */
  readonly leaseMs?: number;
  /** Attempts cap. @default 100 */
  readonly maxAttempts?: number;
  /** memlock completed marker after a task applied (`Tasks` option `holdAfterMs`); 0 = off. @default 0 */
  readonly holdAfterMs?: number;
  /** Random pause inside a step (ms). @default 20 */
  readonly workMs?: number;
  /**
   * Give up waiting for completion after this long (ms) in all; the report
   * then says `timed_out: true` and counts the steps not yet applied as
   * `unfinished`, not lost. @default 600000
   */
  readonly timeoutMs?: number;
  /**
   * Give up sooner when, after the first step applied, nothing happened (no
   * step applied, no delivery, no publish) for this long (ms): a stuck run.
   * A slow run that keeps making progress runs on until `timeoutMs`, so the
   * deadline scales with how fast this machine is today; so does the start
   * (child processes can take many seconds to start on a loaded machine).
   * @default 30000
   */
  readonly stallMs?: number;
  /** Progress lines (stderr by default in the CLI). */
  readonly log?: ((line: string) => void) | undefined;
}

/** The verifier's figures. All but `details` are the one-line summary. */
export interface VerifyReport {
  tasks: number;
  /** Steps whose effect is there (once or more). */
  applied: number;
  /** Steps not applied yet that could still be: the chain has not reached them. Only a timed-out (or failed) run has any. */
  unfinished: number;
  /** Steps whose effect is missing although their chain moved past them: work that can no longer be applied. */
  lost: number;
  applied_twice: number;
  /** The run hit its deadline (`timeoutMs`, or `stallMs` without progress) before every step applied and the queue drained. */
  timed_out: boolean;
  /** Effect rows in all (`applied` plus the extra rows of steps applied twice). */
  effects: number;
  chains_completed: number;
  /** Deliveries memlock refused (held by another copy, or its completed marker): no database work for them at that moment. */
  stopped_by_memlock: number;
  /** Deliveries dropped by the sequence check (the task had already applied). */
  stopped_by_sequence: number;
  /** Database transactions of all deliveries (claims, effects, failure records) per task. */
  db_tx_per_task: number;
  details: {
    deliveries: number;
    published_copies: number;
    outcomes: Record<string, number>;
    nacks: number;
    connection_kills: number;
    consumer_sigkills: number;
    consumer_self_kills: number;
    relay_kills: number;
    memcached_restarts: number;
    lease_overwritten: number;
    unfiltered: number;
    permanently_failed: number;
    chains: number;
    completed: boolean;
    elapsed_s: number;
  };
}

/** True when every task's effect happened exactly once, every chain completed, and the run finished in time. */
export function verified(r: VerifyReport): boolean {
  return (
    r.lost === 0 &&
    r.applied_twice === 0 &&
    r.effects === r.tasks &&
    r.chains_completed === r.details.chains &&
    r.details.permanently_failed === 0 &&
    !r.timed_out
  );
}

/**
 * `verified`, `violated` (an effect lost or applied twice, or a task failed
 * for good: the run proved something wrong) or `timed_out` (nothing wrong
 * seen, but the run did not finish: inconclusive, run it again with more time).
 */
export function verdict(r: VerifyReport): 'verified' | 'violated' | 'timed_out' {
  if (verified(r)) return 'verified';
  if (r.lost > 0 || r.applied_twice > 0 || r.details.permanently_failed > 0) return 'violated';
  return r.timed_out ? 'timed_out' : 'violated';
}

/** The short form (`--quick`, and the verifier test in `npm test`): every fault, fewer tasks and copies. */
export const quickVerify = Object.freeze({
  chains: 30,
  steps: 4,
  copies: [2, 8] as const,
  lateMs: [300, 1500] as const,
  // Short run, so the faults come sooner and more often: each must happen at least once.
  connectionKillMs: [1000, 2500] as const,
  consumerKillMs: [1500, 3000] as const,
  crashProbability: 0.01,
  memcachedRestartsAt: [0.4] as const,
  // The first relay dies at its first batch after 300 ms (publishing before
  // that makes progress). 1 s was too long on Node 24: a fast run could
  // publish every row within a relay's first second, so no kill happened.
  // Later relays die at a fifth of their batches: with every one dying, a
  // loaded machine (load 15-20) spent the run restarting relays (110 of 120
  // steps in 150 s).
  relayKillProbability: 1,
  laterRelayKillProbability: 0.2,
  relayMinLifeMs: 300,
  leaseMs: 1500,
  workMs: 10,
  // It takes 10-30 s here; a loaded machine makes it slower, not stuck.
  timeoutMs: 150_000,
  stallMs: 20_000,
}) satisfies VerifyOptions;

const here = (file: string): string => fileURLToPath(new URL(file, import.meta.url));

/** Runs the verifier; resolves with the report (check `lost` and `applied_twice`). */
export async function runVerifier(options: VerifyOptions = {}): Promise<VerifyReport> {
  const started = performance.now();
  const log = options.log ?? (() => undefined);
  const chains = options.chains ?? 300;
  const steps = options.steps ?? 10;
  const consumerCount = options.consumers ?? 4;
  const total = chains * steps;
  const id = randomBytes(4).toString('hex');
  const schema = `memlock_tasks_${id}`;
  const queue = `memlock-tasks-${id}`;

  const mc = await startMemcached();
  const pool = examplePool(4);
  const memlock = new Memlock({ servers: mc.address });
  const tasks = new Tasks({ pool, memlock, schema });
  const conn = await amqp.connect(amqpUrl);
  conn.on('error', () => undefined);
  const admin = await conn.createChannel();
  admin.on('error', () => undefined);

  const cfg: ChildConfig = {
    schema,
    queue,
    memcached: mc.address,
    steps,
    nackProbability: options.nackProbability ?? 0.02,
    crashProbability: options.crashProbability ?? 0.002,
    connectionKillMs: options.connectionKillMs ?? [3000, 8000],
    workMs: options.workMs ?? 20,
    copies: options.copies ?? [2, 32],
    lateShare: options.lateShare ?? 0.25,
    lateMs: options.lateMs ?? [500, 4000],
    relayKillProbability: options.relayKillProbability ?? 0.2,
    relayMinLifeMs: options.relayMinLifeMs ?? 1500,
    leaseMs: options.leaseMs ?? 2000,
    maxAttempts: options.maxAttempts ?? 100,
    holdAfterMs: options.holdAfterMs ?? 0,
  };

  const outcomes: Record<string, number> = {};
  const counts = {
    deliveries: 0,
    tx: 0,
    memlock: 0,
    sequence: 0,
    nacks: 0,
    connectionKills: 0,
    consumerSigkills: 0,
    selfKills: 0,
    relayKills: 0,
    restarts: 0,
    leaseOverwritten: 0,
    unfiltered: 0,
    copies: 0,
  };
  let pendingLate = 0;
  let lastActivity = performance.now();
  let running = true;
  const children = new Set<ChildProcess>();
  /**
   * When each child first reported something (it is up and working). A
   * consumer is SIGKILLed only after working for the shortest kill interval:
   * on a loaded machine one can take longer to start than the interval, and
   * killing consumers before they work tests nothing (under load 15-20 the
   * quick run applied 30-50 of 120 steps in 150 s that way).
   */
  const workingSince = new WeakMap<ChildProcess, number>();

  const onMessage = (m: ChildMessage): void => {
    // Deliveries are activity; the relay's periodic progress report is not.
    if (m.type !== 'published' || m.rows > 0) lastActivity = performance.now();
    switch (m.type) {
      case 'result':
        counts.deliveries++;
        counts.tx += m.tx;
        outcomes[m.reason] = (outcomes[m.reason] ?? 0) + 1;
        if (m.stoppedBy === 'memlock') counts.memlock++;
        if (m.stoppedBy === 'sequence') counts.sequence++;
        if (!m.filtered) counts.unfiltered++;
        break;
      case 'nacked':
        counts.nacks++;
        break;
      case 'connection-killed':
        counts.connectionKills++;
        break;
      case 'crash':
        counts.selfKills++;
        break;
      case 'lease-overwritten':
        counts.leaseOverwritten++;
        break;
      case 'relay-kill':
        counts.relayKills++;
        break;
      case 'published':
        counts.copies += m.copies;
        pendingLate = m.pendingLate;
        break;
    }
  };

  /** Starts a child and restarts it whenever it dies, until the run ends. */
  const keepAlive = (file: string, name: string, later: ChildConfig = cfg): { current(): ChildProcess | undefined } => {
    let child: ChildProcess | undefined;
    let started = 0;
    const start = (): void => {
      const c = spawn(process.execPath, ['--import=tsx', here(file)], {
        env: { ...process.env, [CONFIG_ENV]: JSON.stringify(started++ === 0 ? cfg : later) },
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      });
      child = c;
      children.add(c);
      let stderr = '';
      c.stderr?.setEncoding('utf8');
      c.stderr?.on('data', (s: string) => {
        stderr = (stderr + s).slice(-4000);
      });
      c.on('message', (m) => {
        if (!workingSince.has(c)) workingSince.set(c, performance.now());
        onMessage(m as ChildMessage);
      });
      c.on('error', () => undefined);
      c.on('exit', (code, signal) => {
        children.delete(c);
        if (!running) return;
        if (signal !== 'SIGKILL') log(`${name} exited (code ${code}, signal ${signal}): ${stderr.trim().slice(-1000)}`);
        setTimeout(() => {
          if (running) start();
        }, 100);
      });
    };
    start();
    return { current: () => child };
  };

  const outcome = { completed: false };
  try {
    await tasks.migrate();
    await createEffectsTable(pool, schema);
    await admin.assertQueue(queue, { durable: true, autoDelete: false });

    const consumers = Array.from({ length: consumerCount }, (_, i) =>
      keepAlive('./consumer-process.ts', `consumer ${i}`),
    );
    await startChains(
      tasks,
      pool,
      Array.from({ length: chains }, (_, i) => `chain-${i}`),
    );
    keepAlive('./relay-process.ts', 'relay', {
      ...cfg,
      relayKillProbability: options.laterRelayKillProbability ?? cfg.relayKillProbability,
    });

    const [killLo, killHi] = options.consumerKillMs ?? [2500, 5000];
    let nextKill = performance.now() + between(killLo, killHi);
    const restartsAt = [...(options.memcachedRestartsAt ?? [0.3, 0.65])].sort((a, b) => a - b);
    const deadline = performance.now() + (options.timeoutMs ?? 600_000);
    const stallMs = options.stallMs ?? 30_000;
    lastActivity = performance.now();
    let lastApplied = 0;
    let lastLog = 0;
    const stalled = (): boolean => lastApplied > 0 && performance.now() - lastActivity >= stallMs;
    while (performance.now() < deadline && !stalled()) {
      await sleep(250);
      const { rows } = await pool.query<{ applied: string; unsent: string }>(
        `SELECT (SELECT coalesce(sum(seq), 0) FROM "${schema}".entities) AS applied,
                (SELECT count(*) FROM "${schema}".outbox WHERE sent_at IS NULL) AS unsent`,
      );
      const applied = Number(rows[0]!.applied);
      const unsent = Number(rows[0]!.unsent);
      if (applied > lastApplied) {
        lastApplied = applied;
        lastActivity = performance.now();
      }
      if (performance.now() - lastLog > 2000) {
        lastLog = performance.now();
        log(
          `applied ${applied}/${total}, deliveries ${counts.deliveries}, consumer kills ${counts.consumerSigkills}+${counts.selfKills}, relay kills ${counts.relayKills}, memcached restarts ${counts.restarts}`,
        );
      }
      if (restartsAt.length > 0 && applied >= restartsAt[0]! * total) {
        restartsAt.shift();
        await mc.restart();
        counts.restarts++;
      }
      if (killHi > 0 && performance.now() >= nextKill) {
        const victim = consumers[between(0, consumers.length - 1)]!.current();
        const since = victim === undefined ? undefined : workingSince.get(victim);
        // Not working long enough yet: try again at the next poll, not a whole interval later.
        if (victim !== undefined && since !== undefined && performance.now() - since >= killLo) {
          nextKill = performance.now() + between(killLo, killHi);
          if (victim.exitCode === null && victim.signalCode === null) {
            victim.kill('SIGKILL');
            counts.consumerSigkills++;
          }
        }
      }
      if (applied >= total && unsent === 0) {
        // Done applying; let the late copies and requeued deliveries drain, so they too meet the guards.
        const q = await admin.checkQueue(queue);
        if (pendingLate === 0 && q.messageCount === 0 && performance.now() - lastActivity > 1500) {
          outcome.completed = true;
          break;
        }
      }
    }
    if (!outcome.completed) {
      const why = performance.now() >= deadline ? 'its deadline' : `${stallMs / 1000} s without progress`;
      log(`timed out (${why}): counting what applied; the rest is unfinished, not lost`);
    }
    running = false;
    await Promise.all(
      [...children].map(
        (c) =>
          new Promise<void>((resolve) => {
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
          }),
      ),
    );

    const summary = await countEffects(pool, schema, chains, steps);
    return {
      tasks: total,
      applied: summary.applied,
      unfinished: total - summary.applied - summary.lost,
      lost: summary.lost,
      applied_twice: summary.twice,
      timed_out: !outcome.completed,
      effects: summary.effects,
      chains_completed: summary.completed,
      stopped_by_memlock: counts.memlock,
      stopped_by_sequence: counts.sequence,
      db_tx_per_task: Math.round((counts.tx / total) * 100) / 100,
      details: {
        deliveries: counts.deliveries,
        published_copies: counts.copies,
        outcomes,
        nacks: counts.nacks,
        connection_kills: counts.connectionKills,
        consumer_sigkills: counts.consumerSigkills,
        consumer_self_kills: counts.selfKills,
        relay_kills: counts.relayKills,
        memcached_restarts: counts.restarts,
        lease_overwritten: counts.leaseOverwritten,
        unfiltered: counts.unfiltered,
        permanently_failed: summary.failed,
        chains,
        completed: outcome.completed,
        elapsed_s: Math.round((performance.now() - started) / 100) / 10,
      },
    };
  } finally {
    running = false;
    for (const c of children) c.kill('SIGKILL');
    await admin.deleteQueue(queue).catch(() => undefined);
    await conn.close().catch(() => undefined);
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await pool.end();
    await memlock.close();
    await mc.stop();
  }
}

/** What the effects table says, per step of every chain (see {@link VerifyReport}). */
export interface EffectCounts {
  effects: number;
  applied: number;
  lost: number;
  twice: number;
  completed: number;
  failed: number;
}

/**
 * Counts the effects of `chains` chains of `steps` steps in `schema`. Step s
 * of a chain is applied when its effect row exists; lost when it does not
 * although the chain's `seq` moved past s (a step's effect commits with the
 * `seq` increment, so nothing can apply it any more); otherwise unfinished.
 */
export async function countEffects(
  db: { query: pg.Pool['query'] },
  schema: string,
  chains: number,
  steps: number,
): Promise<EffectCounts> {
  const {
    rows: [row],
  } = await db.query<Record<keyof EffectCounts, string>>(
    `WITH expected AS (
       SELECT 'chain-' || c AS entity_id, s AS step FROM generate_series(0, $1::int - 1) c, generate_series(0, $2::int - 1) s
     ), got AS (
       SELECT entity_id, step, count(*) AS n FROM "${schema}".effects GROUP BY entity_id, step
     ), per_step AS (
       SELECT e.entity_id, e.step, coalesce(g.n, 0) AS n, coalesce(en.seq, 0) AS seq
       FROM expected e LEFT JOIN got g USING (entity_id, step) LEFT JOIN "${schema}".entities en ON en.id = e.entity_id
     ), per_chain AS (
       SELECT entity_id, bool_and(n = 1) AS exact FROM per_step GROUP BY entity_id
     )
     SELECT (SELECT count(*) FROM "${schema}".effects) AS effects,
            (SELECT count(*) FROM per_step WHERE n > 0) AS applied,
            (SELECT count(*) FROM per_step WHERE n = 0 AND seq > step) AS lost,
            (SELECT count(*) FROM per_step WHERE n > 1) AS twice,
            (SELECT count(*) FROM per_chain p JOIN "${schema}".entities en ON en.id = p.entity_id WHERE p.exact AND en.seq = $2) AS completed,
            (SELECT count(*) FROM "${schema}".entities WHERE failed_at IS NOT NULL) AS failed`,
    [chains, steps],
  );
  return {
    effects: Number(row!.effects),
    applied: Number(row!.applied),
    lost: Number(row!.lost),
    twice: Number(row!.twice),
    completed: Number(row!.completed),
    failed: Number(row!.failed),
  };
}
