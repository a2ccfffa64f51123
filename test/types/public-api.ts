/**
 * Type tests of the public API (expect-type). Checked by `test/integration/types.test.ts`
 * with `tsc -p test/types` under the strict settings users run with
 * (`strict`, `exactOptionalPropertyTypes`, `noUncheckedIndexedAccess`,
 * `skipLibCheck: false`). A wrong type is a compile error, not a runtime one.
 */
import { expectTypeOf } from 'expect-type';
import {
  Memlock,
  MemlockError,
  LockNotAcquiredError,
  LockLostError,
  MemcacheUnavailableError,
  EmptyClientIdError,
  channels,
  subscribe,
  tryWithLock,
  type AcquireHow,
  type ChannelName,
  type Lock,
  type LockInfo,
  type LockLostKind,
  type LockOptions,
  type LostMessage,
  type MemlockErrorCode,
  type MemlockOptions,
  type WaitOptions,
  type HeartbeatErrorMessage,
  type AcquiredMessage,
  type RefusedMessage,
} from 'memlock';

declare const memlock: Memlock;
declare const env: string | undefined;

// Options accept `undefined` under exactOptionalPropertyTypes (values read from env, say).
new Memlock({
  servers: env,
  prefix: undefined,
  leaseMs: undefined,
  heartbeatMs: undefined,
  timeoutMs: undefined,
  username: env,
  password: env,
  ref: undefined,
});
expectTypeOf<{ servers: string | undefined }>().toExtend<MemlockOptions>();
expectTypeOf<{ timeoutMs: undefined; minDelayMs: undefined; maxDelayMs: undefined }>().toExtend<WaitOptions>();
expectTypeOf<{
  signal: AbortSignal | undefined;
  wait: WaitOptions | undefined;
  holdAfterMs: undefined;
  failOpen: undefined;
}>().toExtend<LockOptions>();
// ...but not wrong types.
// @ts-expect-error leaseMs is a number
new Memlock({ leaseMs: '16s' });
// @ts-expect-error no such option
new Memlock({ server: 'localhost:11211' });

// tryWithLock resolves with what fn resolves; fn gets an AbortSignal.
expectTypeOf(
  memlock.tryWithLock('k', 'c', async (signal) => {
    expectTypeOf(signal).toEqualTypeOf<AbortSignal>();
    return 42;
  }),
).toEqualTypeOf<Promise<number>>();
expectTypeOf(memlock.tryWithLock('k', 'c', () => 'sync' as const)).toEqualTypeOf<Promise<'sync'>>();
expectTypeOf(tryWithLock('k', 'c', () => true)).toEqualTypeOf<Promise<boolean>>();
expectTypeOf(memlock.acquire('k', 'c')).toEqualTypeOf<Promise<Lock>>();
expectTypeOf<Lock['release']>().returns.toEqualTypeOf<Promise<boolean>>();
expectTypeOf<Lock>().toHaveProperty(Symbol.asyncDispose);
expectTypeOf(memlock.inspect('k')).toEqualTypeOf<Promise<LockInfo | null>>();
expectTypeOf<LockInfo['acquiredAt']>().toEqualTypeOf<Date>();
expectTypeOf(memlock.close()).toEqualTypeOf<Promise<void>>();

// wrap: arguments from fn (without the trailing signal), R from fn and onNotAcquired.
const send = memlock.wrap(
  async (orderId: string, amount: number, signal: AbortSignal) => {
    expectTypeOf(signal).toEqualTypeOf<AbortSignal>();
    return amount > 0 ? ('sent' as const) : ('skipped' as const);
  },
  {
    key: (orderId, amount) => {
      expectTypeOf(orderId).toEqualTypeOf<string>();
      expectTypeOf(amount).toEqualTypeOf<number>();
      return `receipt:${orderId}`;
    },
    onNotAcquired: (error) => {
      expectTypeOf(error).toEqualTypeOf<LockNotAcquiredError>();
      return 'duplicate' as const;
    },
  },
);
expectTypeOf(send).parameters.toEqualTypeOf<[string, number]>();
expectTypeOf(send).returns.toEqualTypeOf<Promise<'sent' | 'skipped' | 'duplicate'>>();
const plain = memlock.wrap(async (id: number, _signal: AbortSignal) => id * 2, { key: (id) => `k:${id}` });
expectTypeOf(plain).toEqualTypeOf<(id: number) => Promise<number>>();

// Error codes are a union of literals, narrowed per class.
expectTypeOf<MemlockError['code']>().toEqualTypeOf<MemlockErrorCode>();
expectTypeOf<MemlockErrorCode>().toEqualTypeOf<
  | 'ERR_MEMLOCK_NOT_ACQUIRED'
  | 'ERR_MEMLOCK_EMPTY_CLIENT_ID'
  | 'ERR_MEMLOCK_LOST'
  | 'ERR_MEMLOCK_UNAVAILABLE'
  | 'ERR_MEMLOCK_CLOSED'
>();
expectTypeOf<LockNotAcquiredError['code']>().toEqualTypeOf<'ERR_MEMLOCK_NOT_ACQUIRED'>();
expectTypeOf<EmptyClientIdError['code']>().toEqualTypeOf<'ERR_MEMLOCK_EMPTY_CLIENT_ID'>();
expectTypeOf<LockLostError['code']>().toEqualTypeOf<'ERR_MEMLOCK_LOST'>();
expectTypeOf<MemcacheUnavailableError['code']>().toEqualTypeOf<'ERR_MEMLOCK_UNAVAILABLE'>();
expectTypeOf<LockNotAcquiredError['holder']>().toEqualTypeOf<string | undefined>();
expectTypeOf<LockNotAcquiredError['done']>().toEqualTypeOf<boolean>();
expectTypeOf<LockLostError['kind']>().toEqualTypeOf<LockLostKind>();
declare const caught: unknown;
if (caught instanceof MemlockError) {
  // A switch over the codes is exhaustive.
  const label = ((code: MemlockErrorCode): string => {
    switch (code) {
      case 'ERR_MEMLOCK_NOT_ACQUIRED':
        return 'busy';
      case 'ERR_MEMLOCK_EMPTY_CLIENT_ID':
        return 'bug';
      case 'ERR_MEMLOCK_LOST':
        return 'lost';
      case 'ERR_MEMLOCK_UNAVAILABLE':
        return 'down';
      case 'ERR_MEMLOCK_CLOSED':
        return 'closed';
    }
  })(caught.code);
  expectTypeOf(label).toEqualTypeOf<string>();
  // @ts-expect-error not one of memlock's codes
  if (caught.code === 'ERR_SOMETHING_ELSE') throw caught;
}

// Diagnostics: typed subscribe by name, typed channel objects.
const off = subscribe('memlock:lost', (message, name) => {
  expectTypeOf(message).toEqualTypeOf<LostMessage>();
  expectTypeOf(message.error).toEqualTypeOf<LockLostError>();
  expectTypeOf(message.kind).toEqualTypeOf<LockLostKind>();
  expectTypeOf(name).toEqualTypeOf<'memlock:lost'>();
});
expectTypeOf(off).toEqualTypeOf<() => void>();
subscribe('memlock:acquired', ({ how, durationMs }) => {
  expectTypeOf(how).toEqualTypeOf<AcquireHow>();
  expectTypeOf(durationMs).toEqualTypeOf<number>();
});
subscribe('memlock:heartbeat-error', (message) => expectTypeOf(message).toEqualTypeOf<HeartbeatErrorMessage>());
// @ts-expect-error not a memlock channel
subscribe('memlock:nope', () => {});
// @ts-expect-error the payload of memlock:refused has no `kind`
subscribe('memlock:refused', (message: LostMessage) => message.kind);
channels.acquired.subscribe((message) => expectTypeOf(message).toEqualTypeOf<AcquiredMessage>());
channels.refused.subscribe((message) => expectTypeOf(message.holder).toEqualTypeOf<string | undefined>());
expectTypeOf<RefusedMessage['server']>().toEqualTypeOf<string>();
expectTypeOf<AcquireHow>().toEqualTypeOf<'added' | 'takeover' | 'stolen' | 'recovered' | 'handoff'>();
expectTypeOf<ChannelName>().toExtend<`memlock:${string}`>();
