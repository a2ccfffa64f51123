// The pieces every scenario is built from: the Resources lifecycle, the report
// skeleton, skipped subjects, fresh keys, per-round progress lines, target
// notes and the loop comparison over variants. (The table's columns come from
// columns.ts; a subject's rounds are folded into its result row in fold.ts.)

import type { Avail, BenchContext, Result, Scenario, ScenarioReport } from './types.js';
import { Resources } from './clients.js';
import {
  compareLoops,
  errorsSuffix,
  pairedRatio,
  type Contestant,
  type LoopRoundWithOps,
  type LoopSubject,
  type RoundErrors,
} from './measure.js';
import { fmtRatio } from './report.js';

/** A scenario as written: `run` also gets a Resources bag, closed when the run ends, however it ends. */
export interface ScenarioDefinition extends Omit<Scenario, 'run'> {
  run: (ctx: BenchContext, res: Resources) => Promise<ScenarioReport>;
}

/** The Scenario the CLI runs: a fresh Resources bag per run, closed after it. */
export function defineScenario(def: ScenarioDefinition): Scenario {
  return {
    name: def.name,
    summary: def.summary,
    needs: def.needs,
    ...(def.deadlineMs ? { deadlineMs: def.deadlineMs } : {}),
    run: async (ctx) => {
      const res = new Resources();
      try {
        return await def.run(ctx, res);
      } finally {
        await res.close();
      }
    },
  };
}

/** What a scenario says about its table; the results, skipped subjects and further notes are filled in as it runs. */
export type ReportHeader = Pick<ScenarioReport, 'scenario' | 'title' | 'baseline' | 'primary' | 'columns'> & {
  notes?: string[];
};

export function scenarioReport(header: ReportHeader): ScenarioReport {
  const { notes = [], ...rest } = header;
  return { ...rest, results: [], skipped: [], notes: [...notes] };
}

/** Fresh keys `bench:<runId>:<tag>:0`, `:1`, ...: a key never used before, so no attempt meets another's entry. */
export function keySequence(ctx: BenchContext, tag: string): () => string {
  let next = 0;
  return () => `bench:${ctx.runId}:${tag}:${next++}`;
}

/** The reason of the first unavailable dependency ('' when all are available). */
export function missing(...deps: Avail<unknown>[]): string {
  for (const d of deps) if (!d.ok) return d.reason;
  return '';
}

/** Records `subjects` as skipped for `reason`. */
export function skip(report: ScenarioReport, reason: string, ...subjects: string[]): void {
  for (const subject of subjects) report.skipped.push({ subject, reason });
}

/** `target <label>: <shown> met|NOT met`, the form of every target check under a table. */
export function targetNote(label: string, shown: string, met: boolean): string {
  return `target ${label}: ${shown} ${met ? 'met' : 'NOT met'}`;
}

/**
 * ' (paired per-round median 0.97x, rounds 0.80x-1.20x)': shown beside a
 * target's ratio of medians; the verdict stays on the ratio of medians.
 */
export function pairedNote(a: Result | undefined, b: Result | undefined): string {
  const p = pairedRatio(a, b);
  return p === null
    ? ''
    : ` (paired per-round median ${fmtRatio(p.median)}, rounds ${fmtRatio(p.min)}-${fmtRatio(p.max)})`;
}

export function findResult(results: readonly Result[], subject: string, variant = ''): Result | undefined {
  return results.find((r) => r.subject === subject && r.variant === variant);
}

/**
 * A contestant that logs its warm-up and one progress line per round:
 * `[scenario] subject round i/n: <describe(round)>, N errors (first)`.
 */
export function contestant<R extends RoundErrors>(
  ctx: BenchContext,
  scenario: string,
  subject: string,
  plan: {
    /** Rounds announced in the progress line (default ctx.rounds). */
    rounds?: number;
    warmUp?: () => Promise<unknown>;
    round: () => Promise<R>;
    describe: (round: R) => string;
  },
): Contestant<R> {
  const { warmUp } = plan;
  return {
    name: subject,
    warmUp: warmUp
      ? async () => {
          ctx.progress(`[${scenario}] ${subject}: warm-up`);
          await warmUp();
        }
      : undefined,
    round: async (r) => {
      const round = await plan.round();
      ctx.progress(
        `[${scenario}] ${subject} round ${r + 1}/${plan.rounds ?? ctx.rounds}: ${plan.describe(round)}${errorsSuffix(round)}`,
      );
      return round;
    },
  };
}

/** The two ways of running a loop comparison: one operation at a time, and 64 in flight. */
export const LOOP_VARIANTS = [
  { label: 'sequential', concurrency: 1 },
  { label: '64 in flight', concurrency: 64 },
] as const;

/** Measures `subjects` with compareLoops once per variant (concurrency) and turns each subject's rounds into a Result. */
export async function compareVariants(
  ctx: BenchContext,
  scenario: string,
  subjects: LoopSubject[],
  variants: readonly { label: string; concurrency: number }[],
  toResult: (variant: string, subject: string, rounds: LoopRoundWithOps[]) => Result,
): Promise<Result[]> {
  const results: Result[] = [];
  for (const v of variants) {
    const rounds = await compareLoops(subjects, {
      concurrency: v.concurrency,
      durationMs: ctx.durationMs,
      rounds: ctx.rounds,
      warmupMs: ctx.warmupMs,
      progress: ctx.progress,
      label: `[${scenario}] ${v.label}`,
    });
    for (const [subject, rs] of rounds) results.push(toResult(v.label, subject, rs));
  }
  return results;
}
