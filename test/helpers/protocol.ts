/**
 * The wire protocol the tests run on: `MEMLOCK_TEST_PROTOCOL=meta` or
 * `=text` means that protocol, anything else the default, binary.
 *
 * `npm test` runs every suite with the binary protocol, then `npm run
 * test:meta` and `npm run test:text` run the suites named
 * `*.protocols.test.ts` again over meta and text. A suite that builds its
 * clients with `testProtocol` (directly, through test/helpers/shared.ts, a
 * test/faults/lib module or a fixture) and whose behaviour depends on the
 * protocol is named so; one that does not (the protocol would not change
 * what it runs) is not, and runs once.
 *
 * With `text`, the harness also puts a recording proxy in front of every
 * memcached that fails the run on any non-classic command, or with
 * `MEMLOCK_TEST_VIA=twemproxy` a nutcracker instead (which drops such a
 * connection itself; see `testFront` in memcached.ts).
 */
import type { ProtocolName } from '../../src/index.js';

const requested = process.env['MEMLOCK_TEST_PROTOCOL'];

export const testProtocol: ProtocolName = requested === 'meta' || requested === 'text' ? requested : 'binary';

/** Whether the tests' clients reach memcached through twemproxy (MEMLOCK_TEST_VIA=twemproxy). */
export const viaTwemproxy = process.env['MEMLOCK_TEST_VIA'] === 'twemproxy';
