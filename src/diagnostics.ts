/**
 * Instrumentation on `node:diagnostics_channel`. Messages are built only when
 * a channel has subscribers, so an unobserved lock pays one property read.
 */
import diagnostics from 'node:diagnostics_channel';
import type { LockLostKind } from './errors.js';
import type { AcquireHow } from './protocol.js';

/** Channel names, all under `memlock:`. */
export const channels = Object.freeze({
  acquired: diagnostics.channel('memlock:acquired'),
  refused: diagnostics.channel('memlock:refused'),
  stolen: diagnostics.channel('memlock:stolen'),
  lost: diagnostics.channel('memlock:lost'),
  released: diagnostics.channel('memlock:released'),
  releaseFailed: diagnostics.channel('memlock:release-failed'),
  heartbeatError: diagnostics.channel('memlock:heartbeat-error'),
});

/** `memlock:acquired` payload. */
export interface AcquiredMessage { key: string; clientId: string; how: AcquireHow; server: string; durationMs: number }
/** `memlock:refused` payload. `holder` is the holder's clientId when readable. */
export interface RefusedMessage { key: string; clientId: string; holder: string | undefined; server: string }
/** `memlock:stolen` payload: a takeover (same clientId) or a steal (stealAfterMs). */
export interface StolenMessage { key: string; clientId: string; how: 'takeover' | 'stolen'; previousClientId: string; previousAcquiredAt: Date }
/** `memlock:lost` payload. */
export interface LostMessage { key: string; clientId: string; kind: LockLostKind; error: Error }
/** `memlock:released` payload. */
export interface ReleasedMessage { key: string; clientId: string; heldMs: number }
/** `memlock:release-failed` payload: `reason` is 'gone' | 'taken' | 'error'. */
export interface ReleaseFailedMessage { key: string; clientId: string; reason: 'gone' | 'taken' | 'error'; error: Error | undefined }
/** `memlock:heartbeat-error` payload: a renewal failed (it is retried until the lease deadline). */
export interface HeartbeatErrorMessage { key: string; clientId: string; error: Error }

/** Publishes when somebody listens; builds the message lazily. @internal */
export function publish<T extends object>(channel: diagnostics.Channel, build: () => T): void {
  if (channel.hasSubscribers) channel.publish(build());
}
