/**
 * Soak runner: the long versions of the fault and load scenarios of
 * test/faults, against real memcached processes it starts itself (and the
 * local PostgreSQL for the cross-process exclusion record), all on 127.0.0.1.
 *
 *   npm run test:soak -- --duration 600     # seconds, default 300
 *
 * Phases (share of the duration):
 * - mutual exclusion across processes, 40 % (a third each without faults,
 *   with entries deleted/flushed behind the holders' backs, with partitions);
 * - 10,000 locks held at once, 30 %: renewals/s, heap per lock, heap growth,
 *   event-loop delay, timers and listeners;
 * - partition-while-held runs in a loop, 15 %;
 * - eviction rounds in a loop, 15 %.
 *
 * Prints a Markdown table of figures, writes it to test/soak/results.md, and
 * exits non-zero if any promise of the lock was broken.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { startMemcached, stopAll } from '../helpers/memcached.js';
import { describeExclusion, runExclusion, type ExclusionFigures, type FaultMode } from '../faults/lib/exclusion.js';
import { holdMany } from '../faults/lib/load.js';
import { runPartition, type PartitionFigures, type PartitionMode } from '../faults/lib/partition.js';
import { runEvictionRound, type EvictionFigures } from '../faults/lib/eviction.js';

function parseDuration(argv: readonly string[]): number {
  let seconds = 300;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--duration') seconds = Number(argv[++i]);
    else if (arg.startsWith('--duration=')) seconds = Number(arg.slice('--duration='.length));
    else if (arg === '--help' || arg === '-h') {
      console.log('usage: npm run test:soak -- [--duration SECONDS]   (default 300)');
      process.exit(0);
    } else throw new Error(`unknown argument ${arg}`);
  }
  if (!Number.isFinite(seconds) || seconds < 20) throw new Error('--duration must be a number of seconds >= 20');
  return seconds;
}

interface Row {
  scenario: string;
  figure: string;
  value: string;
  ok: boolean | undefined;
}
const rows: Row[] = [];
const violations: string[] = [];
function row(scenario: string, figure: string, value: string | number, ok?: boolean): void {
  rows.push({ scenario, figure, value: String(value), ok });
  if (ok === false) violations.push(`${scenario}: ${figure} = ${value}`);
}
const ms = (x: number): string => `${x.toFixed(0)} ms`;
const log = (line: string): void => console.error(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}`);

const durationS = parseDuration(process.argv.slice(2));
const budgetMs = durationS * 1000;
const started = performance.now();
const TIMER_SLACK_MS = 100;

try {
  // --- 8: mutual exclusion across processes --------------------------------
  {
    const mc = await startMemcached();
    const each = Math.max(5000, (budgetMs * 0.4) / 3);
    const settings: Record<FaultMode, Parameters<typeof runExclusion>[1]> = {
      none: { mode: 'none', durationMs: each, leaseMs: 10_000, heartbeatMs: 1000, timeoutMs: 500 },
      delete: {
        mode: 'delete',
        durationMs: each,
        leaseMs: 3000,
        heartbeatMs: 200,
        timeoutMs: 300,
        holdMs: [5, 400],
        faultEveryMs: 250,
      },
      partition: {
        mode: 'partition',
        durationMs: each,
        leaseMs: 2000,
        heartbeatMs: 250,
        timeoutMs: 200,
        holdMs: [2, 10],
        holdMsProc0: [1500, 2000],
        afterAbortMs: 2000,
        log,
      },
    };
    for (const mode of ['none', 'delete', 'partition'] as const) {
      log(`exclusion (${mode}) for ${(each / 1000).toFixed(0)} s`);
      const f: ExclusionFigures = await runExclusion(mc, settings[mode]);
      log(describeExclusion(f));
      const s = `8. exclusion, 4x25 workers, 10 keys (${mode})`;
      row(
        s,
        'critical sections (per s)',
        `${f.sections} (${f.sectionsPerSecond.toFixed(0)}/s) in ${(f.durationMs / 1000).toFixed(0)} s`,
      );
      row(s, 'faults injected', f.faults);
      row(
        s,
        'loss signals by kind',
        Object.entries(f.lost)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ') || 'none',
        mode === 'none' ? Object.keys(f.lost).length === 0 : undefined,
      );
      row(s, 'refused / unavailable', `${f.notAcquired} / ${f.unavailable}`);
      row(s, 'overlaps', f.overlaps, mode === 'none' ? f.overlaps === 0 : undefined);
      if (mode !== 'none') {
        row(
          s,
          'overlaps: told before / after (max lag) / by release / silent',
          `${f.toldBefore} / ${f.toldAfter} (${f.maxSignalLagMs.toFixed(0)} ms) / ${f.toldByRelease} / ${f.silent}`,
          mode === 'partition'
            ? f.toldAfter + f.toldByRelease + f.silent === 0
            : f.silent === 0 && f.maxSignalLagMs <= settings.delete.heartbeatMs + 500,
        );
      }
      row(s, 'unexpected errors', f.unexpected.length, f.unexpected.length === 0);
      for (const u of f.unexpected.slice(0, 5)) log(`unexpected: ${u}`);
    }
    await mc.stop();
  }

  // --- 9: 10,000 locks held --------------------------------------------------
  {
    const mc = await startMemcached({ memoryMb: 256 });
    const holdMs = Math.max(10_000, budgetMs * 0.3);
    log(`holding 10,000 locks for ${(holdMs / 1000).toFixed(0)} s`);
    const f = await holdMany(mc, {
      locks: 10_000,
      holdMs,
      leaseMs: 4000,
      heartbeatMs: 1000,
      timeoutMs: 1000,
      sampleEveryMs: Math.max(1000, holdMs / 30),
    });
    const s = '9. 10,000 locks held (lease 4 s, heartbeat 1 s)';
    row(s, 'acquire 10,000', ms(f.acquireMs));
    row(s, 'held for', `${(f.holdMs / 1000).toFixed(0)} s`);
    row(s, 'renewals (per s)', `${f.renewals} (${f.renewalsPerSecond.toFixed(0)}/s)`);
    row(
      s,
      'renewals per lock: min / expected min',
      `${f.minRenewalsPerLock} / ${f.expectedMinPerLock}`,
      f.minRenewalsPerLock >= f.expectedMinPerLock,
    );
    row(
      s,
      'longest gap between confirmed writes of a lock',
      `${ms(f.maxGapMs)} (guaranteed lease ${ms(f.guaranteedLeaseMs)})`,
      f.maxGapMs < f.guaranteedLeaseMs,
    );
    row(s, 'renewal failures / locks lost', `${f.renewalFailures} / ${f.lost}`, f.lost === 0);
    row(
      s,
      'heap per held lock',
      `${f.heapPerLockBytes.toFixed(0)} B (+${f.externalPerLockBytes.toFixed(0)} B external)`,
    );
    row(
      s,
      'heap growth while holding',
      `${f.heapGrowthPerLockBytes.toFixed(1)} B/lock; samples ${f.heapSamplesMb[0]?.toFixed(1)}..${Math.max(...f.heapSamplesMb).toFixed(1)} MB`,
      f.heapGrowthPerLockBytes < 128,
    );
    row(
      s,
      'event-loop delay p50 / p99 / max',
      `${f.eventLoopDelayP50Ms.toFixed(1)} / ${f.eventLoopDelayP99Ms.toFixed(1)} / ${f.eventLoopDelayMaxMs.toFixed(1)} ms`,
    );
    row(
      s,
      'timers created while holding (pending start -> end)',
      `${f.timersCreated} (${f.timersLiveStart} -> ${f.timersLiveEnd})`,
      f.timersLiveEnd <= f.timersLiveStart + 2,
    );
    row(
      s,
      "ref'd Timeout resources (start -> end)",
      `${f.activeTimeoutsStart} -> ${f.activeTimeoutsEnd}`,
      f.activeTimeoutsEnd <= f.activeTimeoutsStart + 2,
    );
    row(
      s,
      'caller-signal listeners (start -> end -> released)',
      `${f.signalListenersStart} -> ${f.signalListenersEnd} -> ${f.signalListenersAfterRelease}`,
      f.signalListenersEnd === f.signalListenersStart && f.signalListenersAfterRelease === 0,
    );
    row(
      s,
      'socket listeners (start -> end)',
      `${f.socketListenersStart} -> ${f.socketListenersEnd}`,
      f.socketListenersEnd === f.socketListenersStart,
    );
    row(s, 'released (time)', `${f.released} (${ms(f.releaseMs)})`, f.released === f.locks);
    await mc.stop();
  }

  // --- 1: partition while held, in a loop ------------------------------------
  {
    const mc = await startMemcached();
    const until = performance.now() + Math.max(12_000, budgetMs * 0.15);
    const runs: PartitionFigures[] = [];
    for (let i = 0; performance.now() < until || runs.length < 2; i++) {
      const mode: PartitionMode = i % 2 === 0 ? 'stall' : 'refuse-drop';
      runs.push(await runPartition(mc, { mode, leaseMs: 3000, heartbeatMs: 500, timeoutMs: 200, key: `p${i}` }));
    }
    const s = '1. partition while held (lease 3 s, heartbeat 500 ms)';
    const minMargin = Math.min(...runs.map((r) => r.marginMs));
    row(
      s,
      'runs (stall / refuse+drop)',
      `${runs.length} (${runs.filter((r) => r.mode === 'stall').length} / ${runs.filter((r) => r.mode === 'refuse-drop').length})`,
    );
    row(
      s,
      'loss kinds',
      [...new Set(runs.map((r) => r.kind))].join(', '),
      runs.every((r) => r.kind === 'unreachable' || r.kind === 'deadline'),
    );
    row(
      s,
      'abort after the partition: min / max',
      `${ms(Math.min(...runs.map((r) => r.abortAfterMs)))} / ${ms(Math.max(...runs.map((r) => r.abortAfterMs)))}`,
    );
    row(
      s,
      'abort vs lease deadline: worst margin (strict: library send time)',
      `${minMargin.toFixed(1)} ms (${Math.min(...runs.map((r) => r.strictMarginMs)).toFixed(2)} ms; ${runs.filter((r) => r.strictMarginMs < 0).length}/${runs.length} runs after the deadline)`,
      minMargin >= -TIMER_SLACK_MS,
    );
    row(
      s,
      'other client acquired after the abort: min gap',
      ms(Math.min(...runs.map((r) => r.gapMs))),
      runs.every((r) => r.gapMs >= 0),
    );
    row(s, 'takeover after the partition: max', ms(Math.max(...runs.map((r) => r.takeoverAfterMs))));
    row(
      s,
      'old holder after loss: renewals / deletes / applied',
      `${runs.reduce((n, r) => n + r.renewalsAfterLoss, 0)} / ${runs.reduce((n, r) => n + r.deletesAfterLoss, 0)} / ${runs.reduce((n, r) => n + r.appliedAfterLoss, 0)}`,
      runs.every((r) => r.appliedAfterLoss === 0 && r.renewalsAfterLoss === 0),
    );
    row(
      s,
      "new holder's entry intact after heal + release",
      `${runs.filter((r) => r.newHolderIntact).length}/${runs.length}`,
      runs.every((r) => r.newHolderIntact && !r.released),
    );
    await mc.stop();
  }

  // --- 4: eviction rounds ------------------------------------------------------
  {
    const mc = await startMemcached({ memoryMb: 2 });
    const until = performance.now() + Math.max(8000, budgetMs * 0.15);
    const rounds: EvictionFigures[] = [];
    for (let i = 0; performance.now() < until || rounds.length < 1; i++) {
      rounds.push(
        await runEvictionRound(mc, {
          locks: 200,
          heartbeatMs: 500,
          leaseMs: 4000,
          timeoutMs: 500,
          churnEntries: 21_000,
          churnPerSecond: 60_000,
          prefix: `ev${i}:`,
        }),
      );
    }
    const s = '4. eviction (memcached -m 2, churn of same-size entries)';
    const lost: Record<string, number> = {};
    for (const r of rounds) for (const [k, v] of Object.entries(r.lost)) lost[k] = (lost[k] ?? 0) + v;
    row(s, 'rounds x locks', `${rounds.length} x 200`);
    row(
      s,
      'entries churned / evicted by memcached',
      `${rounds.reduce((n, r) => n + r.churned, 0)} / ${rounds.reduce((n, r) => n + r.evictions, 0)}`,
    );
    row(
      s,
      'locks lost (signalled, by kind)',
      Object.entries(lost)
        .map(([k, v]) => `${k} ${v}`)
        .join(', '),
      Object.keys(lost).every((k) => k === 'gone'),
    );
    row(
      s,
      'silent losses (unsignalled, entry missing)',
      rounds.reduce((n, r) => n + r.silent, 0),
      rounds.every((r) => r.silent === 0),
    );
    row(
      s,
      'lost locks whose release deleted something / survivors not released',
      `${rounds.reduce((n, r) => n + r.releasedAfterLoss, 0)} / ${rounds.reduce((n, r) => n + r.survivorsNotReleased, 0)}`,
      rounds.every((r) => r.releasedAfterLoss === 0 && r.survivorsNotReleased === 0),
    );
    await mc.stop();
  }
} catch (error) {
  violations.push(`soak aborted: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  await stopAll();
}

const wallS = (performance.now() - started) / 1000;
let memcachedVersion = 'unknown';
try {
  memcachedVersion = execFileSync('memcached', ['-V'], { encoding: 'utf8' }).trim();
} catch {
  // not on PATH: the run failed anyway
}
const cpus = os.cpus();
const lines = [
  '# memlock soak results',
  '',
  `- Command: \`npm run test:soak -- --duration ${durationS}\` (wall time ${wallS.toFixed(0)} s)`,
  `- Date: ${new Date().toISOString()}`,
  `- Machine: ${cpus.length} x ${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GB RAM, ${os.type()} ${os.release()}; Node.js ${process.version}; ${memcachedVersion}`,
  `- Result: ${violations.length === 0 ? 'every check passed' : `${violations.length} check(s) FAILED`}`,
  '',
  '| Scenario | Figure | Value | Check |',
  '| --- | --- | --- | --- |',
  ...rows.map(
    (r) =>
      `| ${r.scenario} | ${r.figure} | ${r.value.replaceAll('|', '\\|')} | ${r.ok === undefined ? '' : r.ok ? 'ok' : '**FAILED**'} |`,
  ),
  '',
  ...(violations.length > 0
    ? ['## Failed checks', '', ...violations.map((v) => `- ${v.replaceAll('\n', ' ')}`), '']
    : []),
];
const markdown = lines.join('\n');
console.log(markdown);
writeFileSync(fileURLToPath(new URL('results.md', import.meta.url)), markdown);
process.exitCode = violations.length === 0 ? 0 : 1;
