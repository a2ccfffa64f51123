/**
 * Alerts and instrumentation of the task module: `node:diagnostics_channel`
 * channels under `memlock:tasks:` (published only when subscribed), plus
 * plain callback hooks for the two events that usually page someone.
 * Hooks never throw into the task path: an error in a hook is published on
 * `memlock:tasks:hook-error` and otherwise ignored.
 */
import diagnostics from 'node:diagnostics_channel';

/** Channel names, all under `memlock:tasks:`. */
export const taskChannels = Object.freeze({
  /** A worker took over a row lease that a crashed or stuck worker left behind. */
  leaseOverwritten: diagnostics.channel('memlock:tasks:lease-overwritten'),
  /** A task used up its attempts; it will not run again unless `retryFailed()` re-issues it. */
  permanentlyFailed: diagnostics.channel('memlock:tasks:permanently-failed'),
  /** A task ran and its sequence advanced. */
  applied: diagnostics.channel('memlock:tasks:applied'),
  /** A delivery was acknowledged without running (stale, duplicate, ...). */
  dropped: diagnostics.channel('memlock:tasks:dropped'),
  /** A delivery was handed back to be tried again later (locked, leased, early, failed). */
  deferred: diagnostics.channel('memlock:tasks:deferred'),
  /** memcache was unavailable: the delivery went to the database unfiltered. */
  memlockUnavailable: diagnostics.channel('memlock:tasks:memlock-unavailable'),
  /** The relay failed a batch (it is retried). */
  relayError: diagnostics.channel('memlock:tasks:relay-error'),
  /** A hook threw. */
  hookError: diagnostics.channel('memlock:tasks:hook-error'),
});

/** `memlock:tasks:lease-overwritten` payload and `onLeaseOverwritten` argument. */
export interface LeaseOverwrittenEvent {
  readonly entityId: string;
  readonly seq: number;
  readonly name: string;
  /** The worker whose lease expired. */
  readonly previousOwner: string;
  /** When its lease ran out (database clock). */
  readonly expiredAt: Date;
  /** The delivery taking over. */
  readonly owner: string;
  /** This attempt's number (1-based). */
  readonly attempt: number;
}

/** `memlock:tasks:permanently-failed` payload and `onPermanentlyFailed` argument. */
export interface PermanentlyFailedEvent {
  readonly entityId: string;
  readonly seq: number;
  readonly name: string;
  readonly attempts: number;
  /** The last error (`undefined` when the attempts were used up by crashed workers). */
  readonly error: unknown;
}

/** `memlock:tasks:applied` payload. */
export interface AppliedEvent {
  readonly entityId: string;
  readonly seq: number;
  readonly name: string;
  readonly attempt: number;
  readonly durationMs: number;
}
/** `memlock:tasks:dropped` / `memlock:tasks:deferred` payload. */
export interface DispositionEvent {
  readonly entityId: string | undefined;
  readonly seq: number | undefined;
  readonly reason: string;
}

/** Callback hooks of `Tasks`. */
export interface TaskHooks {
  /** A row lease left by a crashed or stuck worker was taken over (datastore-locker's overwrite alert). */
  readonly onLeaseOverwritten?: ((event: LeaseOverwrittenEvent) => void) | undefined;
  /** A task used up `maxAttempts`. */
  readonly onPermanentlyFailed?: ((event: PermanentlyFailedEvent) => void | Promise<void>) | undefined;
}

/** Publishes when somebody listens; builds the message lazily. */
export function publish<T extends object>(channel: diagnostics.Channel, build: () => T): void {
  if (channel.hasSubscribers) channel.publish(build());
}

/** Calls a hook; a throw or rejection goes to `memlock:tasks:hook-error`, never to the caller. */
export function callHook<E>(name: string, hook: ((event: E) => void | Promise<void>) | undefined, event: E): void {
  if (hook === undefined) return;
  const report = (error: unknown): void => publish(taskChannels.hookError, () => ({ hook: name, error }));
  try {
    const out = hook(event);
    if (out instanceof Promise) out.catch(report);
  } catch (error) {
    report(error);
  }
}
