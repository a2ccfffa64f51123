/**
 * The waiter's pacing (src/pacing.ts): a pure function from what a waiter
 * knows to its next delay. Exact values for representative states, then the
 * bounds over arbitrary states.
 */
import test from 'ava';
import fc from 'fast-check';
import { UNKNOWN_POSITION } from '../../src/local-waiters.js';
import { MAX_WATCH_MS, nextDelay, type PaceState } from '../../src/pacing.js';

/** A waiter with room to spare: neither maxDelayMs nor the deadline binds. */
const base: PaceState = {
  position: 0,
  promoted: false,
  heldMs: 10,
  cycleMs: 40,
  minDelayMs: 2,
  maxDelayMs: 10_000,
  remainingMs: 60_000,
};

const delay = (state: Partial<PaceState>): number => nextDelay({ ...base, ...state });

test('absent from the queue, or just promoted: look at once', (t) => {
  t.is(delay({ position: -1 }), 0);
  t.is(delay({ position: 0, promoted: true }), 0);
  t.is(delay({ position: 4, promoted: true }), 0);
  t.is(delay({ position: UNKNOWN_POSITION, promoted: true }), 0);
});

test('the head halves the distance to the expected end of the hold', (t) => {
  // (40 - 10) / 2
  t.is(delay({ heldMs: 10 }), 15);
  // (40 - 0) / 2
  t.is(delay({ heldMs: 0 }), 20);
  // Past the expected end: polls every minDelayMs ((10 - 12) / 2 < 0, 12 / 8 < 2).
  t.is(delay({ cycleMs: 10, heldMs: 12 }), 2);
  t.is(delay({ cycleMs: 10, heldMs: 12, minDelayMs: 7 }), 7);
});

test('the head: a hold far past the cycle slows polls to an eighth of it, at most MAX_WATCH_MS', (t) => {
  t.is(MAX_WATCH_MS, 500);
  // 100 / 8 beats (40 - 100) / 2 and minDelayMs
  t.is(delay({ heldMs: 100 }), 12.5);
  t.is(delay({ heldMs: 3200 }), 400);
  t.is(delay({ heldMs: 8000 }), MAX_WATCH_MS);
  // A long expected cycle is capped too: the head never sleeps past a reservation's guaranteed second.
  t.is(delay({ cycleMs: 5000, heldMs: 0 }), MAX_WATCH_MS);
});

test('an unknown place (the queue failed) polls like the head', (t) => {
  for (const state of [{ heldMs: 10 }, { heldMs: 100 }, { heldMs: 8000 }, { cycleMs: 10, heldMs: 12 }]) {
    t.is(delay({ ...state, position: UNKNOWN_POSITION }), delay({ ...state, position: 0 }));
  }
  t.is(delay({ position: UNKNOWN_POSITION }), 15);
});

test('the second place polls at half the handoff interval', (t) => {
  t.is(delay({ position: 1 }), 20);
  t.is(delay({ position: 1, cycleMs: 2 }), 2, 'never below minDelayMs');
  t.is(delay({ position: 1, heldMs: 400 }), 50, 'a long hold: an eighth of it');
  t.is(delay({ position: 1, heldMs: 8000 }), MAX_WATCH_MS);
  t.is(delay({ position: 1, cycleMs: 5000 }), MAX_WATCH_MS);
});

test('places further back re-read the queue at 3/4 of when they expect to move up', (t) => {
  // (3 - 1) * 40 * 0.75
  t.is(delay({ position: 3 }), 60);
  t.is(delay({ position: 5, heldMs: 0 }), 120);
  // Not capped at MAX_WATCH_MS: they do not watch the entry.
  t.is(delay({ position: 10, cycleMs: 100 }), 675);
  // A long hold slows them to an eighth of it, at most MAX_WATCH_MS.
  t.is(delay({ position: 2, cycleMs: 4, heldMs: 1600 }), 200);
  t.is(delay({ position: 2, cycleMs: 4, heldMs: 8000 }), MAX_WATCH_MS);
  t.is(delay({ position: 2, cycleMs: 1, heldMs: 0 }), 2, 'never below minDelayMs');
});

test('maxDelayMs and the time left bound every delay', (t) => {
  t.is(delay({ position: 10, cycleMs: 100, maxDelayMs: 50 }), 50);
  t.is(delay({ position: 10, cycleMs: 100, remainingMs: 7 }), 7);
  t.is(delay({ position: 10, cycleMs: 100, maxDelayMs: 50, remainingMs: 7 }), 7);
  t.is(delay({ position: 0, heldMs: 8000, maxDelayMs: 100 }), 100);
  // Bounds win over minDelayMs too: a waiter never sleeps past its deadline.
  t.is(delay({ position: 0, cycleMs: 0, heldMs: 0, minDelayMs: 50, remainingMs: 3 }), 3);
  t.is(delay({ position: -1, remainingMs: 3 }), 0);
  // The first two places cap even a large minDelayMs: they must see a reservation within its guaranteed second.
  t.is(delay({ position: 0, minDelayMs: 800 }), MAX_WATCH_MS);
  t.is(delay({ position: 1, minDelayMs: 800 }), MAX_WATCH_MS);
  t.is(delay({ position: 2, minDelayMs: 800 }), 800);
});

const states = fc.record({
  position: fc.oneof(fc.constant(-1), fc.constant(UNKNOWN_POSITION), fc.integer({ min: 0, max: 1000 })),
  promoted: fc.boolean(),
  heldMs: fc.double({ min: 0, max: 1e6, noNaN: true }),
  cycleMs: fc.double({ min: 0, max: 1e5, noNaN: true }),
  minDelayMs: fc.integer({ min: 0, max: 1000 }),
  maxDelayMs: fc.integer({ min: 1, max: 60_000 }),
  remainingMs: fc.double({ min: 0, max: 1e6, noNaN: true }),
});

test('bounds: 0 <= delay <= min(maxDelayMs, time left); the first two places at most MAX_WATCH_MS', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(states, (state) => {
        const d = nextDelay(state);
        if (!(d >= 0 && d <= state.maxDelayMs && d <= state.remainingMs)) return false;
        if (state.position <= 1 && d > MAX_WATCH_MS) return false;
        // Unless told to look at once, a waiter sleeps at least minDelayMs (within the bounds).
        const lookNow = state.position === -1 || state.promoted;
        // (The first two places cap even minDelayMs at MAX_WATCH_MS.)
        const watchCap = state.position <= 1 ? MAX_WATCH_MS : Infinity;
        const floor = Math.min(state.minDelayMs, state.maxDelayMs, state.remainingMs, watchCap);
        return lookNow ? d === 0 : d >= floor;
      }),
    ),
  );
});
