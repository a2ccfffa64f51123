/**
 * The event-loop delay a Memlock instance has seen recently, for the lease
 * margin (protocol.ts `leaseMargin`). A lease deadline is a timer: when the
 * loop is busy (GC, CPU starvation, long synchronous work), that timer fires
 * late by about as much as the loop has been delayed lately, so the margin
 * grows with the recent p99 delay instead of staying a fixed 100 ms.
 *
 * One `perf_hooks.monitorEventLoopDelay` histogram per instance, enabled
 * while the instance holds locks (its timer is unref'd and cheap: one
 * sample per RESOLUTION_MS) and disabled by `close()`. Readings are windowed
 * so a stall long ago stops widening the margin: the figure is the larger
 * p99 of the last full window and the current one.
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

/** Sampling interval of the histogram (its samples include it: subtracted). */
export const RESOLUTION_MS = 20;
/** Length of a window; the reading covers the last one to two windows. */
export const WINDOW_MS = 5000;
/** A reading is reused this long: leases read it on every renewal. */
const CACHE_MS = 250;
/** Samples a window needs before its p99 counts (fewer: too noisy). */
const MIN_SAMPLES = 10;

/** Something that reports the recent event-loop delay in ms (tests pass a fake). */
export interface LoopDelaySource {
  /** Recent p99 event-loop delay in ms (0 when none was observed). */
  p99Ms(now: number): number;
}

/** The part of `IntervalHistogram` LoopDelay reads (tests pass a fake). */
export type DelayHistogram = Pick<IntervalHistogram, 'enable' | 'disable' | 'reset' | 'percentile' | 'count'>;

/** @internal The recent p99 event-loop delay of this process, sampled while enabled. */
export class LoopDelay implements LoopDelaySource {
  readonly #create: () => DelayHistogram;
  #histogram: DelayHistogram | undefined;
  #windowStart = 0;
  #previous = 0;
  #cached = 0;
  #cachedAt = -Infinity;

  constructor(create: () => DelayHistogram = () => monitorEventLoopDelay({ resolution: RESOLUTION_MS })) {
    this.#create = create;
  }

  /** Starts sampling (idempotent). */
  start(now: number): void {
    if (this.#histogram !== undefined) return;
    this.#histogram = this.#create();
    this.#histogram.enable();
    this.#windowStart = now;
    this.#previous = 0;
    this.#cachedAt = -Infinity;
  }

  /** Stops sampling and forgets what was seen. */
  stop(): void {
    this.#histogram?.disable();
    this.#histogram = undefined;
    this.#previous = 0;
    this.#cached = 0;
    this.#cachedAt = -Infinity;
  }

  p99Ms(now: number): number {
    const histogram = this.#histogram;
    if (histogram === undefined) return 0;
    if (now - this.#cachedAt < CACHE_MS) return this.#cached;
    const current = windowP99(histogram);
    if (now - this.#windowStart >= WINDOW_MS) {
      this.#previous = current;
      this.#windowStart = now;
      histogram.reset();
    }
    this.#cached = Math.max(this.#previous, current);
    this.#cachedAt = now;
    return this.#cached;
  }
}

function windowP99(histogram: DelayHistogram): number {
  if (histogram.count < MIN_SAMPLES) return 0;
  return Math.max(0, histogram.percentile(99) / 1e6 - RESOLUTION_MS);
}
