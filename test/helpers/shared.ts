/**
 * One memcached per test file, plus Memlock instances that are closed after
 * the file's tests: the set-up most test files share.
 */
import type { TestFn } from 'ava';
import { randomUUID } from 'node:crypto';
import { Memlock, type MemlockOptions } from '../../src/index.js';
import { testProtocol } from './protocol.js';
import { startMemcached, type MemcachedProcess } from './memcached.js';

/** What `sharedServer()` hands a test file. */
export interface SharedServer {
  /** The file's memcached (started in `test.before`). */
  readonly mc: MemcachedProcess;
  /** A Memlock on that server with a prefix unique to the caller (closed after the file). */
  memlock(options?: MemlockOptions, prefix?: string): Memlock;
  /** Registers an instance to be closed after the file. */
  track(...instances: Memlock[]): void;
}

/** Registers before/after hooks on `test` and returns the shared server handle. */
export function sharedServer(test: TestFn): SharedServer {
  let mc: MemcachedProcess | undefined;
  const instances: Memlock[] = [];
  test.before(async () => {
    mc = await startMemcached();
  });
  test.after.always(async () => {
    await Promise.all(instances.map((m) => m.close()));
    await mc?.stop();
  });
  return {
    get mc(): MemcachedProcess {
      if (mc === undefined) throw new Error('sharedServer: memcached is not started yet (use it inside a test)');
      return mc;
    },
    memlock(options = {}, prefix = `t${randomUUID().slice(0, 8)}:`) {
      const m = new Memlock({ servers: this.mc.address, protocol: testProtocol, prefix, ...options });
      instances.push(m);
      return m;
    },
    track(...more) {
      instances.push(...more);
    },
  };
}
