// Timing primitives shared by the scenarios: timed loops (one at a time or N in
// flight), latency samples with percentiles, interleaved rounds and the
// median/spread summary. Nothing here knows about locks or servers.

import { performance } from 'node:perf_hooks';
import type { Result } from './types.js';

export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => {
    setTimeout(resolve, ms);
  });

/** Resolves when `signal` aborts or after `ms`, whichever comes first; true when aborted. */
export function abortedWithin(signal: AbortSignal, ms: number): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(false);
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Rejects with a labelled error when `promise` does not settle within `ms`, so a hung subject cannot stall the run. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, label: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`${label}: did not finish within ${Math.round(ms)} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Growable buffer of latency samples in milliseconds (a Float64Array avoids boxing millions of numbers). */
export class Samples {
  private buf = new Float64Array(4096);
  private n = 0;

  /** All samples of `parts` in one buffer (every round's samples of a subject, for percentiles over the run). */
  static pooled(parts: readonly Samples[]): Samples {
    const all = new Samples();
    for (const part of parts) all.addAll(part);
    return all;
  }

  push(value: number): void {
    if (this.n === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = value;
  }

  addAll(other: Samples): void {
    const values = other.values();
    for (let i = 0; i < values.length; i++) this.push(values[i] ?? 0);
  }

  get count(): number {
    return this.n;
  }

  values(): Float64Array {
    return this.buf.subarray(0, this.n);
  }

  /** p50/p99/max of the samples, null when there are none. */
  summary(): LatencySummary {
    if (this.n === 0) return { p50Ms: null, p99Ms: null, maxMs: null, meanMs: null };
    const sorted = Float64Array.from(this.values()).sort();
    let sum = 0;
    for (let i = 0; i < sorted.length; i++) sum += sorted[i] ?? 0;
    return {
      p50Ms: percentile(sorted, 50),
      p99Ms: percentile(sorted, 99),
      maxMs: sorted[sorted.length - 1] ?? null,
      meanMs: sum / sorted.length,
    };
  }
}

export interface LatencySummary {
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  meanMs: number | null;
}

/** Nearest-rank percentile of an ascending array; null when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? null;
}

export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] ?? null) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

export interface Spread {
  median: number | null;
  min: number | null;
  max: number | null;
  /** Half the range of the per-round figures relative to the median, in percent (the "±" in the tables). */
  spreadPct: number | null;
}

export function spread(values: readonly number[]): Spread {
  const med = median(values);
  if (med === null) return { median: null, min: null, max: null, spreadPct: null };
  const min = Math.min(...values);
  const max = Math.max(...values);
  return { median: med, min, max, spreadPct: med === 0 ? null : ((max - min) / 2 / Math.abs(med)) * 100 };
}

export interface LoopRound {
  ops: number;
  errors: number;
  firstError: string | null;
  elapsedMs: number;
  latencies: Samples;
  /** Process CPU time (user + system) spent during the round, in microseconds. */
  cpuUs: number;
}

export interface LoopOptions {
  durationMs: number;
  /** Number of workers, each running `op` back to back: 1 = sequential, 64 = 64 in flight. */
  concurrency: number;
  /** `worker` is 0..concurrency-1, `seq` a counter unique within the loop. */
  op: (worker: number, seq: number) => Promise<void>;
  /** Stop early once this many operations failed: a broken subject must not spin for the whole window. */
  maxErrors?: number;
  /** Record per-operation latency (default true). */
  record?: boolean;
}

/** Runs `op` on `concurrency` workers until the deadline; each worker finishes its current operation. */
export async function timedLoop(options: LoopOptions): Promise<LoopRound> {
  const { durationMs, concurrency, op, maxErrors = 100, record = true } = options;
  const latencies = new Samples();
  let ops = 0;
  let errors = 0;
  let firstError: string | null = null;
  let seq = 0;
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const deadline = start + durationMs;

  const worker = async (w: number): Promise<void> => {
    while (performance.now() < deadline && errors < maxErrors) {
      const t0 = performance.now();
      try {
        await op(w, seq++);
        if (record) latencies.push(performance.now() - t0);
        ops++;
      } catch (err) {
        errors++;
        firstError ??= describeError(err);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
  const elapsedMs = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  return { ops, errors, firstError, elapsedMs, latencies, cpuUs: cpu.user + cpu.system };
}

/** Runs `fn` over `items` with at most `limit` in flight (used to set up thousands of locks without a stampede). */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, () => worker()));
  return out;
}

export interface Contestant<R> {
  name: string;
  /** Run once before this contestant's first round: JIT, connections and server caches get warm. */
  warmUp?: () => Promise<void>;
  round: (index: number) => Promise<R>;
}

/**
 * Interleaves contestants over rounds (A B A B ...), so drift on the machine
 * (other load, thermal, server state) hits every subject alike instead of
 * whichever happened to run last.
 */
export async function interleave<R>(contestants: readonly Contestant<R>[], rounds: number): Promise<Map<string, R[]>> {
  const out = new Map<string, R[]>(contestants.map((c) => [c.name, []]));
  for (let r = 0; r < rounds; r++) {
    for (const c of contestants) {
      if (r === 0 && c.warmUp) await c.warmUp();
      out.get(c.name)?.push(await c.round(r));
    }
  }
  return out;
}

/**
 * Median over rounds of a's figure / b's figure in the same round. Rounds of
 * one index ran back to back, so slow drift of the machine (a noisy VM can
 * change speed several-fold between rounds) cancels in each pair, which a
 * ratio of the two medians does not do.
 */
export function pairedRatio(
  a: Result | undefined,
  b: Result | undefined,
): { median: number; min: number; max: number } | null {
  const x = a?.perRound;
  const y = b?.perRound;
  if (x === undefined || y === undefined) return null;
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const r = (x[i] as number) / (y[i] as number);
    if (Number.isFinite(r)) ratios.push(r);
  }
  const med = median(ratios);
  return med === null ? null : { median: med, min: Math.min(...ratios), max: Math.max(...ratios) };
}

export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return `${err.name}${typeof code === 'string' ? ` ${code}` : ''}: ${err.message}`;
  }
  return String(err);
}

export function errorCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** What every kind of round counts about failed operations. */
export interface RoundErrors {
  errors: number;
  firstError: string | null;
}

/** `, N errors (first)` for a progress line; empty when the round had none. */
export function errorsSuffix(round: RoundErrors): string {
  return round.errors ? `, ${round.errors} errors (${round.firstError ?? ''})` : '';
}

// ------------------------------------------------- loop comparisons → results

export interface LoopSubject {
  name: string;
  op: (worker: number, seq: number) => Promise<void>;
  /** Server-side operation counter of the backend this subject talks to, read before and after each round. */
  serverOps?: () => Promise<number>;
}

export interface LoopRoundWithOps extends LoopRound {
  serverOps: number | null;
}

export interface CompareOptions {
  concurrency: number;
  durationMs: number;
  rounds: number;
  warmupMs: number;
  progress: (message: string) => void;
  label: string;
}

/**
 * Measures each subject's loop for durationMs in total, split into `rounds`
 * interleaved slices, after a warm-up of its own. Returns the rounds per subject.
 */
export async function compareLoops(
  subjects: readonly LoopSubject[],
  o: CompareOptions,
): Promise<Map<string, LoopRoundWithOps[]>> {
  const slice = o.durationMs / o.rounds;
  const contestants: Contestant<LoopRoundWithOps>[] = subjects.map((s) => ({
    name: s.name,
    warmUp: async () => {
      o.progress(`${o.label} ${s.name}: warm-up`);
      await withDeadline(
        timedLoop({ durationMs: o.warmupMs, concurrency: o.concurrency, op: s.op, record: false }),
        o.warmupMs + 30_000,
        s.name,
      );
    },
    round: async (r) => {
      const before = s.serverOps ? await s.serverOps() : null;
      const round = await withDeadline(
        timedLoop({ durationMs: slice, concurrency: o.concurrency, op: s.op }),
        slice + 30_000,
        s.name,
      );
      const after = s.serverOps ? await s.serverOps() : null;
      const rate = round.ops / (round.elapsedMs / 1000);
      const lat = round.latencies.summary();
      o.progress(
        `${o.label} ${s.name} round ${r + 1}/${o.rounds}: ${Math.round(rate).toLocaleString('en-US')} ops/s, p50 ${lat.p50Ms?.toFixed(3) ?? '-'} ms` +
          errorsSuffix(round),
      );
      return { ...round, serverOps: before !== null && after !== null ? after - before : null };
    },
  }));
  return interleave(contestants, o.rounds);
}
