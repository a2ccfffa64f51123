/**
 * The wire protocol the tests run on: `MEMLOCK_TEST_PROTOCOL=meta` or `=text`
 * runs the core lock tests and the fault scenarios again over that protocol
 * (`npm run test:meta`, `npm run test:text`); anything else means the
 * default, binary. With `text`, the harness also puts a recording proxy in
 * front of every memcached that fails the run on any non-classic command, or
 * with `MEMLOCK_TEST_VIA=twemproxy` a nutcracker instead (which drops such a
 * connection itself; see `testFront` in memcached.ts).
 */
import type { ProtocolName } from '../../src/index.js';

const requested = process.env['MEMLOCK_TEST_PROTOCOL'];

export const testProtocol: ProtocolName = requested === 'meta' || requested === 'text' ? requested : 'binary';

/** Whether the tests' clients reach memcached through twemproxy (MEMLOCK_TEST_VIA=twemproxy). */
export const viaTwemproxy = process.env['MEMLOCK_TEST_VIA'] === 'twemproxy';
