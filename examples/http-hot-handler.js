// A hot HTTP handler: GET /reports/:id builds a report that is expensive to
// make. Concurrent requests for the same report (several app instances behind
// a load balancer) build it once; the others answer 409 at once. The request's
// own abort (client gone) cancels the work, and if memcache is down the
// handler runs anyway (failOpen): the lock only saves work here.
//
//   MEMCACHE_SERVERS=localhost:11211 PORT=3000 node examples/http-hot-handler.js
//   curl localhost:3000/reports/42?ms=2000 & curl localhost:3000/reports/42
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock, subscribe } from 'memlock';

const memlock = new Memlock({ servers: process.env.MEMCACHE_SERVERS });
subscribe('memlock:fail-open', ({ key, error }) => console.warn(`fail-open ${key}: ${error.message}`));

/** The expensive part; honours the lock's signal (lost lock or client gone). */
async function buildReport(id, ms, signal) {
  await sleep(ms, undefined, { signal });
  return { id, rows: 1000, builtAt: new Date().toISOString() };
}

const report = memlock.wrap((id, ms, _requestSignal, signal) => buildReport(id, ms, signal), {
  key: (id) => `report:${id}`,
  signal: (_id, _ms, requestSignal) => requestSignal, // per-call caller signal
  onNotAcquired: () => null, // someone is building it right now
  failOpen: true,
});

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const match = /^\/reports\/(\w+)$/.exec(url.pathname);
  if (req.method !== 'GET' || match === null) return send(res, 404, { error: 'not found' });
  const request = new AbortController();
  res.on('close', () => request.abort(new Error('client went away')));
  try {
    const body = await report(match[1], Number(url.searchParams.get('ms') ?? 100), request.signal);
    if (body === null) send(res, 409, { error: 'this report is being built, retry shortly' });
    else send(res, 200, body);
  } catch (error) {
    if (request.signal.aborted) return console.log(`aborted ${match[1]}: ${request.signal.reason.message}`);
    console.error(error);
    send(res, 503, { error: 'try again' });
  }
});

function send(res, status, body) {
  if (!res.writableEnded) res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

server.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});

process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void memlock.close().then(() => console.log('closed'));
});
