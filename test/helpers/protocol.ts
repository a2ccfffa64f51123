/**
 * The wire protocol the tests run on: `MEMLOCK_TEST_PROTOCOL=meta` runs the
 * core lock tests and the fault scenarios again over the meta protocol
 * (`npm run test:meta`); anything else means the default, binary.
 */
import type { ProtocolName } from '../../src/index.js';

export const testProtocol: ProtocolName = process.env['MEMLOCK_TEST_PROTOCOL'] === 'meta' ? 'meta' : 'binary';
