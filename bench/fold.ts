// Folding a subject's rounds into one result row: sums over rounds, figures
// per unit of work, and the row fields every scenario fills alike (round
// count, errors). loopResult is the fold of the loop comparisons.

import { Samples, spread, type LatencySummary, type LoopRoundWithOps, type RoundErrors } from './measure.js';
import { emptyResult, type Result } from './types.js';

/** The sum of `f` over `rounds`. */
export function total<R>(rounds: readonly R[], f: (round: R) => number): number {
  return rounds.reduce((s, r) => s + f(r), 0);
}

/** The sum of `f` over `rounds`, or null when any round has no figure (a counter that could not be read). */
export function totalOrNull<R>(rounds: readonly R[], f: (round: R) => number | null): number | null {
  return rounds.every((r) => f(r) !== null) ? total(rounds, (r) => f(r) ?? 0) : null;
}

/** `amount` per one of `count` (per commit, per job, per acquisition); null when either is missing or nothing was counted. */
export function perUnit(amount: number | null, count: number): number | null {
  return amount !== null && count > 0 ? amount / count : null;
}

/** The figures a scenario folds from its rounds; roundsResult fills in the rest of the row alike for every scenario. */
export type RoundFigures = Pick<Result, 'opsPerSec' | 'p50Ms' | 'p99Ms' | 'spreadPct' | 'samples' | 'metrics'> &
  Partial<Pick<Result, 'variant' | 'perRound'>>;

/** The figures of a subject ranked by rate: the median of its rounds' rates with their spread, and its latency percentiles. */
export function rateFigures(
  rates: readonly number[],
  latency: LatencySummary,
): Pick<RoundFigures, 'opsPerSec' | 'p50Ms' | 'p99Ms' | 'spreadPct'> {
  const sp = spread(rates);
  return { opsPerSec: sp.median, p50Ms: latency.p50Ms, p99Ms: latency.p99Ms, spreadPct: sp.spreadPct };
}

/** One result row from a subject's rounds: the scenario's figures, the round count and the rounds' errors. */
export function roundsResult(
  scenario: string,
  subject: string,
  rounds: readonly RoundErrors[],
  figures: RoundFigures,
): Result {
  return {
    ...emptyResult(scenario, subject, figures.variant),
    ...figures,
    rounds: rounds.length,
    ...sumErrors(rounds),
  };
}

/** The errors of all rounds and the first one's message, as a Result holds them. */
export function sumErrors(rounds: readonly RoundErrors[]): RoundErrors {
  return {
    errors: total(rounds, (r) => r.errors),
    firstError: rounds.find((r) => r.firstError)?.firstError ?? null,
  };
}

/**
 * Folds a subject's rounds into one result row: median rate, pooled
 * percentiles, cost per operation, and the spread over rounds of the figure the
 * scenario ranks by (rate, or per-round p50 latency).
 */
export function loopResult(
  scenario: string,
  variant: string,
  subject: string,
  rounds: readonly LoopRoundWithOps[],
  spreadOf: 'rate' | 'p50' = 'rate',
): Result {
  const rates = rounds.map((r) => r.ops / (r.elapsedMs / 1000));
  const p50s = rounds.map((r) => r.latencies.summary().p50Ms).filter((x): x is number => x !== null);
  const lat = Samples.pooled(rounds.map((r) => r.latencies)).summary();
  const ops = total(rounds, (r) => r.ops);
  const attempts = ops + total(rounds, (r) => r.errors);
  const serverOps = totalOrNull(rounds, (r) => r.serverOps);
  const cpuUs = total(rounds, (r) => r.cpuUs);
  const sp = spread(rates);
  return roundsResult(scenario, subject, rounds, {
    variant,
    opsPerSec: sp.median,
    p50Ms: lat.p50Ms,
    p99Ms: lat.p99Ms,
    spreadPct: spreadOf === 'rate' ? sp.spreadPct : spread(p50s).spreadPct,
    perRound: spreadOf === 'rate' ? rates : rounds.map((r) => r.latencies.summary().p50Ms ?? Number.NaN),
    samples: ops,
    metrics: {
      minOpsPerSec: sp.min,
      maxOpsPerSec: sp.max,
      maxMs: lat.maxMs,
      serverOpsPerOp: perUnit(serverOps, attempts),
      cpuUsPerOp: perUnit(cpuUs, attempts),
    },
  });
}
