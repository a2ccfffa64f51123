/** Combining abort signals (the caller's, a polyfilled one, `close()`'s) into one native signal. */
import { onAbort } from './abort-listeners.js';
import { reasonOf } from './options.js';

/**
 * A native signal that aborts with the reason of the first of `sources` to
 * abort (an AbortError DOMException for a polyfilled signal without
 * `reason`). Our own checks need a native signal's
 * `throwIfAborted()`, which signals from the `abort-controller` package lack,
 * and a waiting call must also stop on `close()`. One native source is
 * returned as it is; listeners are removed by `dispose()`.
 */
export function linkedSignal(...sources: Array<AbortSignal | undefined>): {
  signal: AbortSignal | undefined;
  dispose: () => void;
} {
  const inputs = sources.filter((s): s is AbortSignal => s !== undefined);
  const only = inputs[0];
  if (inputs.length === 0 || (inputs.length === 1 && only instanceof AbortSignal))
    return { signal: only, dispose: noop };
  const controller = new AbortController();
  const aborted = inputs.find((s) => s.aborted);
  if (aborted !== undefined) {
    controller.abort(reasonOf(aborted));
    return { signal: controller.signal, dispose: noop };
  }
  // One shared listener per source (abort-listeners.ts): many waiting calls may pass the same signal.
  const stops = inputs.map((source) => onAbort(source, (reason) => controller.abort(reason)));
  return { signal: controller.signal, dispose: () => stops.forEach((stop) => stop()) };
}

function noop(): void {}
