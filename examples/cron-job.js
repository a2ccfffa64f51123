// A cron job run by every app instance: each tick, one instance does the work
// and the others skip it. SIGTERM (deploys, scale-down) stops scheduling,
// aborts the running job through its signal and releases the lock with
// `memlock.close()`, so the next instance can take over at once.
//
//   MEMCACHE_SERVERS=localhost:11211 INTERVAL_MS=60000 node examples/cron-job.js
import os from 'node:os';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock, LockNotAcquiredError } from 'memlock';

const memlock = new Memlock({ servers: process.env.MEMCACHE_SERVERS });
const intervalMs = Number(process.env.INTERVAL_MS ?? 60_000);
const jobMs = Number(process.env.JOB_MS ?? 1_000);
const shutdown = new AbortController();

/** The job: long, and stops when its signal aborts (lock lost, or shutdown). */
async function nightlyReport(signal) {
  for (let step = 0; step < 10; step++) await sleep(jobMs / 10, undefined, { signal });
}

async function tick() {
  const clientId = `${os.hostname()}:${process.pid}:${randomUUID()}`;
  try {
    await memlock.tryWithLock('cron:nightly-report', clientId, nightlyReport, { signal: shutdown.signal });
    console.log('ran');
  } catch (error) {
    if (error instanceof LockNotAcquiredError) console.log(`skipped: held by ${error.holder ?? 'another instance'}`);
    else if (shutdown.signal.aborted) console.log('aborted by shutdown');
    else console.error(`failed: ${error.message}`); // lost lock, memcache down: next tick retries
  }
}

process.once('SIGTERM', () => shutdown.abort(new Error('SIGTERM')));
console.log('started');
while (!shutdown.signal.aborted) {
  await tick();
  await sleep(intervalMs, undefined, { signal: shutdown.signal }).catch(() => {});
}
await memlock.close(); // releases anything still held, closes sockets
console.log('stopped');
