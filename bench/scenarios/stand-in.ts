// stand-in: what `npm run bench` measures when there is no memcached (none on
// PATH, MEMCACHE_SERVERS unset): memlock on the in-process stand-in of
// memlock/testing. No network and no server process, so the figures are
// memlock's own cost per call, never memcached's; every row and note says so.

import type { BenchContext, Scenario, ScenarioReport } from '../types.js';
import type { Resources } from '../clients.js';
import { NOT_ACQUIRED } from '../lib.js';
import type { LoopSubject } from '../measure.js';
import { loopResult } from '../fold.js';
import { latencyColumns, loopCostColumns, ratePrimary } from '../columns.js';
import { LOOP_VARIANTS, compareVariants, defineScenario, keySequence, scenarioReport } from '../scenario-kit.js';
import { REAL_MEMCACHED_HOWTO, type StandInModule } from '../servers.js';

const NAME = 'stand-in';
const CYCLE = 'lock/unlock (stand-in)';
const REFUSED = 'refused (stand-in)';

/** The scenario on `standIn` (loaded by the CLI, which runs this only when there is no memcached). */
export function standInScenario(standIn: StandInModule): Scenario {
  return defineScenario({
    name: NAME,
    summary: "memlock on the built-in stand-in (memlock/testing, in-process): memlock's own cost, NOT memcached's",
    needs: ['memlock'],
    run: (ctx, res) => run(ctx, res, standIn),
  });
}

async function run(ctx: BenchContext, res: Resources, standIn: StandInModule): Promise<ScenarioReport> {
  const report = scenarioReport({
    scenario: NAME,
    title: 'memlock on the in-process stand-in (memlock/testing), NOT memcached: no network, no server',
    baseline: CYCLE,
    primary: ratePrimary('calls/s'),
    columns: [...latencyColumns(), ...loopCostColumns('call')],
    notes: [
      `Stand-in figures: memlock's CPU per call against an in-memory double, not a memcached's. ${REAL_MEMCACHED_HOWTO}`,
      `${CYCLE}: tryWithLock on a new key each call; ${REFUSED}: tryWithLock on a key another instance holds. Server ops: requests the stand-in counted.`,
    ],
  });
  const server = new standIn.MemcacheStandIn({ name: 'stand-in (memlock/testing)' });
  const serverOps = async (): Promise<number> => Object.values(server.ops).reduce((a, b) => a + b, 0);
  const own = (): ReturnType<typeof server.memlock> => {
    const memlock = server.memlock();
    res.defer(() => memlock.close());
    return memlock;
  };
  const memlock = own();
  const key = keySequence(ctx, 's');
  const noop = (): void => undefined;
  const held = await own().acquire('held', 'holder');
  res.defer(() => held.release());
  const subjects: LoopSubject[] = [
    { name: CYCLE, op: () => memlock.tryWithLock(key(), 'bench', noop), serverOps },
    {
      name: REFUSED,
      op: async () => {
        try {
          await memlock.tryWithLock('held', 'bench', noop);
        } catch (error) {
          if ((error as { code?: unknown }).code !== NOT_ACQUIRED) throw error;
          return;
        }
        throw new Error('the held key was granted');
      },
      serverOps,
    },
  ];
  report.results.push(
    ...(await compareVariants(ctx, NAME, subjects, LOOP_VARIANTS, (variant, subject, rounds) =>
      loopResult(NAME, variant, subject, rounds),
    )),
  );
  return report;
}
