/**
 * What the helpers that start server processes share: free loopback ports
 * and the parent-death signal that kills a server with the test process.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const HOST = '127.0.0.1';

/** Asks the OS for a free loopback port (bind :0, read it, close). */
export async function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not read a free port'))));
    });
  });
}

/**
 * `setpriv --pdeathsig KILL` (util-linux) makes the kernel SIGKILL a server
 * the tests start (memcached, nutcracker) when the test process dies in a way
 * that skips 'exit' handlers (SIGKILL, ava's timeout teardown). setpriv execs
 * the server, so the pid is unchanged.
 */
export const deathSigPrefix: string[] = (() => {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    try {
      accessSync(path.join(dir || '.', 'setpriv'), fsConstants.X_OK);
      return ['setpriv', '--pdeathsig', 'KILL'];
    } catch {
      // not in this dir
    }
  }
  return [];
})();
