/**
 * The core semantics suite (test/helpers/core-suite.ts) against the
 * `memlock/testing` stand-in, one stand-in per test. The same suite runs
 * against a real memcached in test/integration/core-memcached.protocols.test.ts.
 */
import test from 'ava';
import type { Memlock } from '../../src/index.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { coreSemantics } from '../helpers/core-suite.js';

coreSemantics(test, async () => {
  const memcache = new MemcacheStandIn();
  const instances: Memlock[] = [];
  return {
    memlock(options = {}) {
      const m = memcache.memlock(options);
      instances.push(m);
      return m;
    },
    async peek(memcacheKey) {
      return memcache.peek(memcacheKey);
    },
    evict: async (memcacheKey) => memcache.evict(memcacheKey),
    overwrite: async (memcacheKey, value) => {
      memcache.set(memcacheKey, value, 30);
    },
    down: async () => memcache.unreachable(true),
    async close() {
      await Promise.all(instances.map((m) => m.close()));
    },
  };
});
