/**
 * Instrumentation on `node:diagnostics_channel`, typed per channel, and
 * `NODE_DEBUG=memlock` logging. Messages are built only when a channel has
 * subscribers or debug logging is on, so an unobserved lock pays one
 * property read.
 */
import diagnostics from 'node:diagnostics_channel';
import { debuglog, inspect } from 'node:util';
import type { LockLostError, LockLostKind } from './errors.js';
import type { AcquireHow } from './protocol.js';

export type { AcquireHow } from './protocol.js';

/** `memlock:acquired` payload. */
export interface AcquiredMessage {
  key: string;
  clientId: string;
  how: AcquireHow;
  server: string;
  durationMs: number;
}
/** `memlock:refused` payload. `holder` is the holder's clientId when readable. */
export interface RefusedMessage {
  key: string;
  clientId: string;
  holder: string | undefined;
  server: string;
}
/** `memlock:stolen` payload: a takeover (same clientId) or a steal (stealAfterMs). */
export interface StolenMessage {
  key: string;
  clientId: string;
  how: 'takeover' | 'stolen';
  previousClientId: string;
  previousAcquiredAt: Date;
}
/** `memlock:lost` payload; `error` is the `LockLostError` the lock's signal aborted with. */
export interface LostMessage {
  key: string;
  clientId: string;
  kind: LockLostKind;
  error: LockLostError;
}
/** `memlock:released` payload. */
export interface ReleasedMessage {
  key: string;
  clientId: string;
  heldMs: number;
}
/** `memlock:release-failed` payload: `reason` is 'gone' | 'taken' | 'error'. */
export interface ReleaseFailedMessage {
  key: string;
  clientId: string;
  reason: 'gone' | 'taken' | 'error';
  error: Error | undefined;
}
/**
 * `memlock:heartbeat-error` payload: a renewal failed (it is retried until the
 * lease deadline). Published for the first failure of a streak, then at most
 * once a second per lock; `failures` counts the streak so far.
 */
export interface HeartbeatErrorMessage {
  key: string;
  clientId: string;
  error: Error;
  failures: number;
}
/** `memlock:fail-open` payload: memcache was unavailable and `failOpen` ran `fn` unlocked. */
export interface FailOpenMessage {
  key: string;
  clientId: string;
  error: Error;
}

/** Payload type of each memlock channel, by channel name. */
export interface ChannelMessages {
  'memlock:acquired': AcquiredMessage;
  'memlock:refused': RefusedMessage;
  'memlock:stolen': StolenMessage;
  'memlock:lost': LostMessage;
  'memlock:released': ReleasedMessage;
  'memlock:release-failed': ReleaseFailedMessage;
  'memlock:heartbeat-error': HeartbeatErrorMessage;
  'memlock:fail-open': FailOpenMessage;
}

/** Name of a memlock channel. */
export type ChannelName = keyof ChannelMessages;

/** A subscriber of channel `N`. */
export type ChannelSubscriber<N extends ChannelName> = (message: ChannelMessages[N], name: N) => void;

/**
 * A `node:diagnostics_channel` channel whose messages are `M`: the same
 * object as `diagnostics.channel(name)`, with its message type spelled out.
 */
export interface TypedChannel<M> {
  readonly name: string;
  readonly hasSubscribers: boolean;
  subscribe(onMessage: (message: M, name: string | symbol) => void): void;
  unsubscribe(onMessage: (message: M, name: string | symbol) => void): boolean;
  publish(message: M): void;
}

function channel<N extends ChannelName>(name: N): TypedChannel<ChannelMessages[N]> {
  // The runtime object is Node's own Channel; only its message type is narrowed.
  return diagnostics.channel(name) as unknown as TypedChannel<ChannelMessages[N]>;
}

/** The channel objects, all under `memlock:`. */
export const channels = Object.freeze({
  acquired: channel('memlock:acquired'),
  refused: channel('memlock:refused'),
  stolen: channel('memlock:stolen'),
  lost: channel('memlock:lost'),
  released: channel('memlock:released'),
  releaseFailed: channel('memlock:release-failed'),
  heartbeatError: channel('memlock:heartbeat-error'),
  failOpen: channel('memlock:fail-open'),
});

const channelNames: ReadonlySet<string> = new Set(Object.values(channels).map((c) => c.name));

/**
 * Subscribes `fn` to a memlock channel with its payload typed
 * (`diagnostics.subscribe` underneath). Returns a function that unsubscribes.
 *
 * @throws {TypeError} for an unknown channel name or a non-function `fn`.
 */
export function subscribe<N extends ChannelName>(name: N, fn: ChannelSubscriber<N>): () => void {
  if (typeof name !== 'string' || !channelNames.has(name)) {
    throw new TypeError(
      `Expected \`name\` to be one of ${[...channelNames].join(', ')}, got ${typeof name === 'string' ? JSON.stringify(name) : typeof name}`,
    );
  }
  if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${typeof fn}`);
  const listener = fn as unknown as diagnostics.ChannelListener;
  diagnostics.subscribe(name, listener);
  let subscribed = true;
  return () => {
    if (subscribed) diagnostics.unsubscribe(name, listener);
    subscribed = false;
  };
}

/**
 * `NODE_DEBUG=memlock`: every event is also logged to stderr through
 * `util.debuglog`, subscribers or not. Read once: Node reads `NODE_DEBUG`
 * at start-up.
 */
const debug = debuglog('memlock');
const debugEnabled = debug.enabled;

/** Publishes when somebody listens (or debug logging is on); builds the message lazily. @internal */
export function publish<M extends object>(channel: TypedChannel<M>, build: () => M): void {
  if (!channel.hasSubscribers && !debugEnabled) return;
  const message = build();
  if (channel.hasSubscribers) channel.publish(message);
  if (debugEnabled) debug('%s', formatEvent(channel.name, message));
}

/** One log line per event: `lost key="k" clientId="a" kind=gone …`, plus the likely cause of an error. @internal */
export function formatEvent(name: string, message: object): string {
  const fields: string[] = [];
  let error: unknown;
  let server: string | undefined;
  for (const [field, value] of Object.entries(message)) {
    if (field === 'error') {
      error = value;
      continue;
    }
    if (field === 'server' && typeof value === 'string') server = value;
    fields.push(
      `${field}=${value instanceof Date ? value.toISOString() : typeof value === 'number' ? String(Math.round(value * 1000) / 1000) : inspect(value, { breakLength: Infinity, compact: true })}`,
    );
  }
  let line = [name.replace(/^memlock:/, ''), ...fields].join(' ');
  if (error !== undefined) {
    line += ` error=${inspect(errorText(error), { breakLength: Infinity, compact: true })}`;
    const cause = likelyCause(error, server);
    if (cause !== undefined) line += ` (likely cause: ${cause})`;
  }
  return line;
}

function errorText(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  let text = `${error.name}: ${error.message}`;
  for (let cause = error.cause, depth = 0; cause instanceof Error && depth < 3; cause = cause.cause, depth++) {
    text += ` <- ${(cause as NodeJS.ErrnoException).code ?? cause.name}: ${cause.message}`;
  }
  return text;
}

/** Who reads a `likelyCause` hint. @internal */
export interface HintContext {
  /**
   * How the hint names what to change: the library's options ("pass
   * `servers`") or the `memlock` command's flags ("pass --servers").
   * @default 'options'
   */
  readonly style?: 'options' | 'flags' | undefined;
  /** The servers were given explicitly (then no "MEMCACHE_SERVERS is unset" hint). @default false */
  readonly serversGiven?: boolean | undefined;
}

/** The setting each hint points at, per style. */
const SETTINGS = {
  options: {
    unset:
      'MEMCACHE_SERVERS is unset, so the default instance (and any Memlock without `servers`) uses localhost:11211: set MEMCACHE_SERVERS or pass `servers`.',
    tls: 'set `tls: true`',
    noTls: 'drop `tls`',
    ca: 'pass its CA as `tls: { ca }`, or start node with NODE_EXTRA_CA_CERTS=FILE',
    name: 'connect by a name it lists, or set `tls: { servername }`',
  },
  flags: {
    unset:
      'Neither --servers nor MEMCACHE_SERVERS is set, so memlock uses localhost:11211: pass --servers or set MEMCACHE_SERVERS.',
    tls: 'pass --tls',
    noTls: 'drop --tls',
    ca: 'pass its CA with --ca FILE, or set NODE_EXTRA_CA_CERTS=FILE',
    name: 'connect by a name it lists (--servers NAME:PORT)',
  },
} as const;

/** OpenSSL verify codes of a certificate chain that does not lead to a trusted CA. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);
/** What a TLS client reads when the server answers in plain text (no TLS on that port). */
const NOT_TLS = /wrong version number|packet length too long|unknown protocol|http request/i;
/** The transport's error label, e.g. `(cache-1:11211, binary+tls)`: whether TLS was used. */
const LABEL = /\([^,()]+, (?:binary|meta|text)(\+tls)?\)/;

/**
 * A guess at why an operation failed, for humans reading debug output or the
 * `memlock` command's errors. Looks at the error, its `cause` chain (system
 * and TLS error codes), the server and the environment. `undefined` when
 * there is nothing useful to say.
 * @internal
 */
export function likelyCause(error: unknown, server?: string, context: HintContext = {}): string | undefined {
  const codes = new Set<string>();
  const kinds = new Set<string>();
  let target = server;
  let tls: boolean | undefined;
  let notTls = false;
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const { code, kind } = e as Error & { code?: unknown; kind?: unknown };
    if (typeof code === 'string') codes.add(code);
    if (typeof kind === 'string') kinds.add(kind);
    const errorServer = (e as { server?: unknown }).server;
    if (target === undefined && typeof errorServer === 'string') target = errorServer;
    if (/auth|sasl/i.test(e.message)) codes.add('SASL');
    const label = LABEL.exec(e.message);
    if (tls === undefined && label !== null) tls = label[1] !== undefined;
    if (NOT_TLS.test(e.message)) notTls = true;
  }
  const say = SETTINGS[context.style ?? 'options'];
  const where = target === undefined ? 'the memcache server' : target;
  const unsetHint =
    process.env.MEMCACHE_SERVERS === undefined &&
    context.serversGiven !== true &&
    (target === undefined || /^(localhost|127\.0\.0\.1|::1):11211$/.test(target))
      ? ` ${say.unset}`
      : '';
  if (kinds.has('deadline'))
    return 'the event loop was blocked (or the process paused) longer than the lease allows; move synchronous work off the loop or raise leaseMs';
  if (kinds.has('gone'))
    return 'the entry was evicted, flushed, expired or deleted (memcached restart or memory pressure?)';
  if (kinds.has('taken')) return 'another acquisition took the entry (same clientId elsewhere, or stealAfterMs)';
  if (codes.has('ECONNREFUSED')) return `nothing accepts connections at ${where}.${unsetHint}`;
  if (codes.has('ENOTFOUND') || codes.has('EAI_AGAIN')) return `the host name of ${where} does not resolve`;
  if ([...codes].some((code) => UNTRUSTED.has(code)))
    return `the TLS certificate of ${where} is not signed by a CA this process trusts: ${say.ca}`;
  if (codes.has('CERT_HAS_EXPIRED') || codes.has('CERT_NOT_YET_VALID'))
    return `the TLS certificate of ${where} has expired or is not valid yet (or this host's clock is wrong)`;
  if (codes.has('ERR_TLS_CERT_ALTNAME_INVALID'))
    return `the TLS certificate of ${where} is for other host names: ${say.name}`;
  if (notTls) return `${where} does not speak TLS on that port: ${say.noTls}, or use its TLS port`;
  if (codes.has('SASL'))
    return 'SASL authentication failed: check username/password (MEMCACHE_USERNAME / MEMCACHE_PASSWORD)';
  // memcached -Z resets a connection whose first bytes are not a TLS handshake.
  if (codes.has('ECONNRESET') && tls === false)
    return `${where} reset the connection: if it speaks TLS (memcached -Z), ${say.tls}; else it is down or restarting.${unsetHint}`;
  if (
    codes.has('ETIMEDOUT') ||
    codes.has('ECONNRESET') ||
    codes.has('EPIPE') ||
    kinds.has('unreachable') ||
    codes.has('ERR_MEMLOCK_UNAVAILABLE')
  ) {
    return `${where} is down, unreachable or slower than timeoutMs.${unsetHint}`;
  }
  return undefined;
}
