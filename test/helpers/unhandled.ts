/**
 * Records unhandled rejections and uncaught exceptions of this test file's
 * process (ava runs each file in a process of its own), so scenarios can
 * assert that background work (heartbeats, timers, sockets) never threw.
 */
import type { TestFn } from 'ava';

/** Starts recording; returns the live list. */
export function trackUnhandled(): unknown[] {
  const unhandled: unknown[] = [];
  process.on('unhandledRejection', (reason) => unhandled.push(reason));
  process.on('uncaughtException', (error) => unhandled.push(error));
  return unhandled;
}

/** Starts recording and asserts after every test of the file that nothing was recorded. */
export function failOnUnhandled(test: TestFn): unknown[] {
  const unhandled = trackUnhandled();
  test.afterEach.always((t) => {
    t.deepEqual(unhandled, [], 'no unhandled rejection or uncaught exception');
  });
  return unhandled;
}
