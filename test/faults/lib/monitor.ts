/**
 * In-process record of critical sections, for tests whose contenders all run
 * in one process (one clock: `performance.now()`). A section that starts while
 * another section on the same key is still running is an overlap; the lock
 * keeps its promise when the earlier holder's signal had already aborted with
 * a `LockLostError` (or, for faults memcache itself causes — eviction, flush,
 * restart — aborts within a heartbeat or so of the overlap).
 */
import { LockLostError } from '../../../src/index.js';

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
    const section: Section = { key, holder, start: performance.now(), end: Number.NaN, signal, lostAt: Number.NaN, lostKind: undefined, releaseFailedAt: Number.NaN };
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
      this.overlaps.push({ key, earlier: other, later: section, signalledBefore: !Number.isNaN(other.lostAt) && other.lostAt <= section.start });
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
  maxLagMs(): number {
    let lag = 0;
    for (const o of this.overlaps) {
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
