// Loads the library under test. It is imported dynamically so that the
// scenarios that do not need it (and the other subjects of those that do) still
// run when src/ does not load, e.g. half-way through a refactor; memlock
// subjects are then skipped with the import error as the reason.
//
// By default it benches the compiled build (dist/, which `npm run bench` builds
// first): that is what users run. MEMLOCK_BENCH_MODULE=path/to/index.(ts|js)
// benches another build (src/ through tsx, an older checkout) against the same peers.

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type * as memlockModule from '../src/index.js';
import type { Avail } from './types.js';
import { describeError } from './measure.js';

export type MemlockModule = typeof memlockModule;
export type MemlockInstance = InstanceType<MemlockModule['Memlock']>;
export type MemlockOptions = ConstructorParameters<MemlockModule['Memlock']>[0];

export async function loadMemlock(): Promise<Avail<MemlockModule>> {
  const override = process.env.MEMLOCK_BENCH_MODULE;
  const specifier = override
    ? pathToFileURL(resolve(override)).href
    : new URL('../dist/index.js', import.meta.url).href;
  try {
    const mod = (await import(specifier)) as MemlockModule;
    if (typeof mod.Memlock !== 'function') return { ok: false, reason: `${specifier} exports no Memlock class` };
    return { ok: true, value: mod };
  } catch (err) {
    return { ok: false, reason: `library did not load (${describeError(err).split('\n')[0]})` };
  }
}

/** The stable code of a refusal; checked by code so another build's class identity does not matter. */
export const NOT_ACQUIRED = 'ERR_MEMLOCK_NOT_ACQUIRED';
