/**
 * Leak checks and polling for tests: the contract promises no timers or
 * sockets left after a call settles and `close()` resolves.
 */
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Resource types that exist regardless of the code under test: stdio and the
 * ava worker's IPC channel (an ava 7 worker shows exactly three `PipeWrap`),
 * a TTY when run by hand, and short-lived requests of runner I/O (CloseReq,
 * FSReq*, WriteWrap for console output).
 */
const BASELINE = new Set(['TTYWrap', 'PipeWrap', 'CloseReq', 'FSReqCallback', 'FSReqPromise', 'WriteWrap']);

/**
 * Ref'd resources keeping the event loop alive (`Timeout`, `TCPSocketWrap`,
 * `TCPServerWrap`, `ProcessWrap`, ...), minus runner baseline types. Unref'd
 * handles are not listed by Node. Compare a snapshot taken before the code
 * under test with one taken after it (see {@link leakedHandles}).
 */
export function activeHandles(): string[] {
  return process
    .getActiveResourcesInfo()
    .filter((t) => !BASELINE.has(t))
    .sort();
}

/**
 * Multiset difference `after - before`: what the code under test left
 * behind. Empty means no new timers/sockets.
 */
export function leakedHandles(before: readonly string[], after: readonly string[] = activeHandles()): string[] {
  const remaining = new Map<string, number>();
  for (const t of before) remaining.set(t, (remaining.get(t) ?? 0) + 1);
  const out: string[] = [];
  for (const t of after) {
    const n = remaining.get(t) ?? 0;
    if (n > 0) remaining.set(t, n - 1);
    else out.push(t);
  }
  return out;
}

/**
 * Polls `cond` every `stepMs` until it is true; rejects after `timeoutMs`
 * with `message` (or a generic one). Use instead of fixed sleeps so tests
 * are both fast and tolerant of slow CI machines.
 */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  stepMs = 10,
  message = 'condition',
): Promise<void> {
  const start = Date.now();
  for (;;) {
    if (await cond()) return;
    const elapsed = Date.now() - start;
    if (elapsed >= timeoutMs) {
      throw new Error(`waitFor: ${message} not met within ${timeoutMs} ms`);
    }
    await sleep(Math.min(stepMs, timeoutMs - elapsed));
  }
}

/**
 * Waits until no resources beyond `before` remain (sockets take a tick or
 * two to close), then resolves with what is still left ([] when clean).
 */
export async function settledLeaks(before: readonly string[], timeoutMs = 1000): Promise<string[]> {
  try {
    await waitFor(() => leakedHandles(before).length === 0, timeoutMs, 10, 'no leaked handles');
  } catch {
    // report what is left instead of throwing, so the test can assert on it
  }
  return leakedHandles(before);
}
