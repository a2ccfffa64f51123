/**
 * In-process record of critical sections, for tests whose contenders all run
 * in one process (one clock: `performance.now()`). A section that starts while
 * another section on the same key is still running is an overlap; the lock
 * keeps its promise when the earlier holder's signal had already aborted with
 * a `LockLostError` (or, for faults memcache itself causes — eviction, flush,
 * restart — aborts within a heartbeat or so of the overlap).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { LockLostError, LockNotAcquiredError, type Memlock } from '../../../src/index.js';

export interface Section {
  readonly key: string;
  readonly holder: string;
  readonly start: number;
  end: number;
  readonly signal: AbortSignal;
  /** When the signal aborted with a LockLostError (`performance.now()`), else NaN. */
  lostAt: number;
  lostKind: string | undefined;
  /** When `release()` reported that nothing of ours was left to delete (gone or taken), else NaN. */
  releaseFailedAt: number;
}

export interface Overlap {
  readonly key: string;
  readonly earlier: Section;
  readonly later: Section;
  /** The earlier holder's signal had aborted with a LockLostError when the later one started. */
  readonly signalledBefore: boolean;
}

export class SectionMonitor {
  readonly #active = new Map<string, Set<Section>>();
  readonly sections: Section[] = [];
  readonly overlaps: Overlap[] = [];

  /** Call first thing inside `fn`. */
  enter(key: string, holder: string, signal: AbortSignal): Section {
    const section: Section = {
      key,
      holder,
      start: performance.now(),
      end: Number.NaN,
      signal,
      lostAt: Number.NaN,
      lostKind: undefined,
      releaseFailedAt: Number.NaN,
    };
    const mark = (): void => {
      if (signal.reason instanceof LockLostError) {
        section.lostAt = performance.now();
        section.lostKind = signal.reason.kind;
      }
    };
    if (signal.aborted) mark();
    else signal.addEventListener('abort', mark, { once: true });
    let active = this.#active.get(key);
    if (active === undefined) this.#active.set(key, (active = new Set()));
    for (const other of active) {
      this.overlaps.push({
        key,
        earlier: other,
        later: section,
        signalledBefore: !Number.isNaN(other.lostAt) && other.lostAt <= section.start,
      });
    }
    active.add(section);
    this.sections.push(section);
    return section;
  }

  /** Call last thing inside `fn` (in a finally). */
  exit(section: Section): void {
    section.end = performance.now();
    this.#active.get(section.key)?.delete(section);
  }

  /** Call with what `lock.release()` resolved, when the test releases explicitly. */
  released(section: Section, ok: boolean): void {
    if (!ok) section.releaseFailedAt = performance.now();
  }

  /** Overlaps whose earlier holder was never told it lost the lock (no signal, no failed release). */
  silent(): Overlap[] {
    return this.overlaps.filter((o) => Number.isNaN(learnedAt(o.earlier)));
  }

  /** Overlaps whose earlier holder was told only after the later one started. */
  late(): Overlap[] {
    return this.overlaps.filter((o) => !o.signalledBefore && !Number.isNaN(learnedAt(o.earlier)));
  }

  /** Largest delay between a later holder's start and the earlier holder learning of the loss (0 when always before). */
  maxLagMs(...exceptKeys: string[]): number {
    let lag = 0;
    for (const o of this.overlaps) {
      if (exceptKeys.includes(o.key)) continue;
      const at = learnedAt(o.earlier);
      if (!Number.isNaN(at)) lag = Math.max(lag, at - o.later.start);
    }
    return lag;
  }
}

/** When the holder learned it had lost the lock: its signal, or else a release that found nothing of ours. */
export function learnedAt(section: Section): number {
  if (!Number.isNaN(section.lostAt)) return section.lostAt;
  return section.releaseFailedAt;
}

/**
 * Positive control for a scenario whose pass condition is an empty "silent"
 * list: until `until`, a worker that takes no lock and a worker holding
 * `memlock`'s lock both run sections on `key` (default 'control'). Their
 * overlaps are real and nobody is told, so `monitor.silent()` must list the
 * key: proof the oracle sees violations under the scenario's own load.
 */
export async function runControl(
  monitor: SectionMonitor,
  memlock: Memlock,
  until: number,
  key = 'control',
): Promise<void> {
  const unlocked = (async () => {
    while (performance.now() < until) {
      const section = monitor.enter(key, 'unlocked', new AbortController().signal);
      await sleep(30);
      monitor.exit(section);
      await sleep(2);
    }
  })();
  const locked = (async () => {
    while (performance.now() < until) {
      try {
        await memlock.tryWithLock(key, 'locked', async (signal) => {
          const section = monitor.enter(key, 'locked', signal);
          await sleep(30);
          monitor.exit(section);
        });
      } catch (error) {
        // Refused or unavailable: try again; the control only needs some locked sections.
        if (!(error instanceof LockNotAcquiredError)) await sleep(5);
      }
      await sleep(2);
    }
  })();
  await Promise.all([unlocked, locked]);
}
