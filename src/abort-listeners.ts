/**
 * One abort listener per signal, shared by everything of ours that follows
 * it. An app may pass one shutdown signal to thousands of held locks and
 * waiting calls: a listener each would cost a closure per call and set off
 * Node's MaxListenersExceededWarning past 10. `AbortSignal.any()` would share
 * too, but its dependent signals have been retained by a long-lived source
 * signal (nodejs/node#55351).
 */
import { reasonOf } from './options.js';

type Subscriber = (reason: unknown) => void;

interface Followers {
  readonly subscribers: Set<Subscriber>;
  readonly listener: () => void;
}

const followed = new WeakMap<AbortSignal, Followers>();

/**
 * Calls `fn` once with the signal's reason when `signal` aborts. Returns the
 * function that stops following; the signal's one listener goes with its
 * last follower. `signal` may be a polyfilled one (no `reason`: an
 * AbortError).
 */
export function onAbort(signal: AbortSignal, fn: Subscriber): () => void {
  let followers = followed.get(signal);
  if (followers === undefined) {
    const subscribers = new Set<Subscriber>();
    const listener = (): void => {
      followed.delete(signal);
      const reason = reasonOf(signal);
      for (const each of [...subscribers]) each(reason);
    };
    followers = { subscribers, listener };
    followed.set(signal, followers);
    signal.addEventListener('abort', listener, { once: true });
  }
  const own = followers;
  // A wrapper per call: one function may follow a signal twice, and each stop removes its own.
  const subscriber: Subscriber = (reason) => fn(reason);
  own.subscribers.add(subscriber);
  return () => {
    if (!own.subscribers.delete(subscriber) || own.subscribers.size > 0) return;
    if (followed.get(signal) === own) followed.delete(signal);
    signal.removeEventListener('abort', own.listener);
  };
}
