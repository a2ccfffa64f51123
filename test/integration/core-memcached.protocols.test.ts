/**
 * The core semantics suite (test/helpers/core-suite.ts) against a real
 * memcached, one server per test. The same suite runs against the
 * `memlock/testing` stand-in in test/unit/core-standin.test.ts.
 */
import test from 'ava';
import { Memlock } from '../../src/index.js';
import { coreSemantics } from '../helpers/core-suite.js';
import { startMemcached } from '../helpers/memcached.js';
import { testProtocol } from '../helpers/protocol.js';

coreSemantics(test, async () => {
  const mc = await startMemcached();
  const instances: Memlock[] = [];
  return {
    memlock(options = {}) {
      const m = new Memlock({ protocol: testProtocol, ...options, servers: mc.address });
      instances.push(m);
      return m;
    },
    async peek(memcacheKey) {
      const entry = await mc.rawGet(memcacheKey);
      if (entry === null) return null;
      const ttlSeconds = await mc.rawTtl(memcacheKey);
      return { value: entry.value, cas: entry.cas, ttlSeconds: ttlSeconds ?? Number.NaN };
    },
    evict: (memcacheKey) => mc.rawDelete(memcacheKey),
    overwrite: (memcacheKey, value) => mc.rawSet(memcacheKey, value, 30),
    down: () => mc.kill(),
    async close() {
      await Promise.all(instances.map((m) => m.close()));
      await mc.stop();
    },
  };
});
