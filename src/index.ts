export { Memlock, tryWithLock, defaultMemlock } from './memlock.js';
export type { WrapOptions, LockInfo } from './memlock.js';
export type { Lock } from './lock.js';
export type { MemlockOptions, LockOptions, TurnOptions, WaitOptions } from './options.js';
export { defaults } from './options.js';
export {
  MemlockError,
  LockNotAcquiredError,
  EmptyClientIdError,
  LockLostError,
  MemcacheUnavailableError,
} from './errors.js';
export type { LockLostKind, MemlockErrorCode } from './errors.js';
export { channels, subscribe } from './diagnostics.js';
export type {
  AcquireHow,
  ChannelMessages,
  ChannelName,
  ChannelSubscriber,
  TypedChannel,
  AcquiredMessage,
  RefusedMessage,
  StolenMessage,
  LostMessage,
  ReleasedMessage,
  ReleaseFailedMessage,
  HeartbeatErrorMessage,
  FailOpenMessage,
} from './diagnostics.js';
export type { LockClient, Entry, WriteResult } from './client.js';
export { MemcacheLockClient, type MemcacheLockClientOptions } from './transport/memcache-lock-client.js';
export {
  MemjsClientAdapter,
  type MemjsClientLike,
  type MemjsServerLike,
  type MemjsResponseLike,
} from './transport/memjs-client.js';
export type { ProtocolName } from './transport/codec.js';
