/**
 * Fake time for the fast tier: one installer of @sinonjs/fake-timers for
 * every test that drives timers, performance.now() and Date by hand, so each
 * test file does not carry its own copy with its own list of faked functions.
 */
import FakeTimers, { type FakeMethod } from '@sinonjs/fake-timers';

export type Clock = ReturnType<typeof FakeTimers.install>;

/**
 * Fake time starts EPOCH ms in: with a clock at 0, `now - since` and
 * `now + since` agree for anything that happened at the start, and a test
 * could not tell them apart. Times a test logs (`Sent.at`) count from EPOCH;
 * it is a whole second (the stand-in's memcached clock counts seconds).
 */
export const EPOCH = 1_000_000;

/** Everything the library schedules or reads time with. */
const ALL_TIME: readonly FakeMethod[] = [
  'setTimeout',
  'clearTimeout',
  'setImmediate',
  'clearImmediate',
  'setInterval',
  'clearInterval',
  'performance',
  'Date',
];

/** What to fake; the defaults suit a test of the library's timing. */
export interface FakeTimeOptions {
  /**
   * The functions to fake; the rest keep real time (e.g. only `performance`
   * for an oracle that stamps events but awaits nothing).
   * @default every timer, performance and Date
   */
  readonly toFake?: readonly FakeMethod[];
}

/** Installs a fake clock at EPOCH for the test `t`; it is uninstalled when the test ends, however it ends. */
export function fakeTime(t: { teardown: (fn: () => void) => void }, options: FakeTimeOptions = {}): Clock {
  const clock = FakeTimers.install({ toFake: [...(options.toFake ?? ALL_TIME)] });
  t.teardown(() => clock.uninstall());
  clock.tick(EPOCH);
  return clock;
}
