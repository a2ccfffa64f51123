/**
 * Counts `publish()` calls on every memlock channel for one test (restored in
 * teardown): "no work without subscribers" must be checked on the channels
 * themselves, not on a test's own subscriptions.
 */
import type { ExecutionContext } from 'ava';
import { channels } from '../../src/index.js';

/** Starts counting; returns the live list of channel names published on. */
export function spyOnPublish(t: ExecutionContext): string[] {
  const calls: string[] = [];
  const restore = Object.values(channels).map((channel) => {
    const original = channel.publish.bind(channel);
    channel.publish = ((message: unknown) => {
      calls.push(channel.name as string);
      original(message as never);
    }) as typeof channel.publish;
    return () => {
      channel.publish = original;
    };
  });
  t.teardown(() => restore.forEach((undo) => undo()));
  return calls;
}
