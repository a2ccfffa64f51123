/**
 * The wire protocol the tests run on: `MEMLOCK_TEST_PROTOCOL=meta` means the
 * meta protocol, anything else the default, binary.
 *
 * `npm test` runs every suite with the binary protocol, then `npm run
 * test:meta` runs the suites named `*.protocols.test.ts` again over meta. A
 * suite that builds its clients with `testProtocol` (directly, through
 * test/helpers/shared.ts, a test/faults/lib module or a fixture) and whose
 * behaviour depends on the protocol is named so; one that does not (the
 * protocol would not change what it runs) is not, and runs once.
 */
import type { ProtocolName } from '../../src/index.js';

export const testProtocol: ProtocolName = process.env['MEMLOCK_TEST_PROTOCOL'] === 'meta' ? 'meta' : 'binary';
