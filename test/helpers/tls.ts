/**
 * A memcached that speaks TLS, for the TLS tests: a throwaway CA and a
 * server certificate (for `localhost` and 127.0.0.1) made with `openssl` in
 * a temp dir, and `memcached -Z -o ssl_chain_cert=…,ssl_key=…` with a second,
 * plain (`notls:`) listener that the test reads the server through, so
 * checks never depend on the TLS code under test.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from './memcached.js';
import { textClient, type RawClient } from './raw-protocol.js';

const run = promisify(execFile);

/** Certificates made for one test file. */
export interface TestPki {
  readonly dir: string;
  /** PEM of the CA that signed the server certificate. */
  readonly ca: Buffer;
  /** PEM of another CA, which signed nothing this server presents. */
  readonly otherCa: Buffer;
  readonly certFile: string;
  readonly keyFile: string;
  remove(): void;
}

/** Makes a CA, another CA, and a server certificate for localhost / 127.0.0.1 signed by the first. */
export async function makePki(): Promise<TestPki> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'memlock-tls-'));
  const f = (name: string): string => path.join(dir, name);
  const openssl = (...args: string[]): Promise<unknown> => run('openssl', args, { cwd: dir });
  for (const ca of ['ca', 'other-ca']) {
    await openssl(
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=memlock test ${ca}`,
      '-keyout',
      f(`${ca}.key`),
      '-out',
      f(`${ca}.pem`),
    );
  }
  await openssl(
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    '/CN=localhost',
    '-keyout',
    f('server.key'),
    '-out',
    f('server.csr'),
  );
  const ext = f('server.ext');
  await run('sh', ['-c', `printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > '${ext}'`]);
  await openssl(
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    ext,
    '-out',
    f('server.pem'),
  );
  return {
    dir,
    ca: readFileSync(f('ca.pem')),
    otherCa: readFileSync(f('other-ca.pem')),
    certFile: f('server.pem'),
    keyFile: f('server.key'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A running TLS memcached. */
export interface TlsMemcached {
  /** '127.0.0.1:PORT' of the TLS listener. */
  readonly address: string;
  readonly port: number;
  /** Text-protocol client on the plain listener (same items). */
  readonly raw: RawClient;
  /** SIGSTOP, resolved once /proc shows the process stopped (signals are delivered asynchronously). */
  pause(): Promise<void>;
  /** SIGCONT, resolved once /proc shows it running again. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

/** Sends SIGSTOP/SIGCONT and waits until /proc shows the new state ('T' = stopped). */
async function signalAndWait(child: ChildProcess, signal: 'SIGSTOP' | 'SIGCONT'): Promise<void> {
  child.kill(signal);
  for (let i = 0; i < 500; i++) {
    let state: string | null = null;
    try {
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'latin1');
      state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    } catch {
      return;
    }
    if (signal === 'SIGSTOP' ? state === 'T' : state !== 'T') return;
    await sleep(2);
  }
}

/** Starts `memcached -Z` on a free port with the given certificate. */
export async function startTlsMemcached(pki: TestPki): Promise<TlsMemcached> {
  const port = await freePort();
  const plainPort = await freePort();
  const child: ChildProcess = spawn(
    'memcached',
    [
      '-U',
      '0',
      '-m',
      '64',
      '-t',
      '1',
      '-u',
      'root',
      '-p',
      String(port),
      '-l',
      `127.0.0.1,notls:127.0.0.1:${plainPort}`,
      '-Z',
      '-o',
      `ssl_chain_cert=${pki.certFile},ssl_key=${pki.keyFile}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (s: string) => {
    stderr += s;
  });
  const kill = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', kill);
  child.unref();
  (child.stderr as { unref?: () => void } | null)?.unref?.();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const raw = textClient({ host: '127.0.0.1', port: plainPort });
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      const stats = await raw.stats({ timeoutMs: 250 });
      if (stats['pid'] === String(child.pid)) break;
    } catch (error) {
      if (Date.now() > deadline || child.exitCode !== null) {
        kill();
        throw new Error(`TLS memcached did not start: ${String(error)}; stderr: ${stderr}`, { cause: error });
      }
    }
    await sleep(20);
  }
  return {
    address: `127.0.0.1:${port}`,
    port,
    raw,
    pause: () => signalAndWait(child, 'SIGSTOP'),
    resume: () => signalAndWait(child, 'SIGCONT'),
    async stop() {
      process.removeListener('exit', kill);
      if (child.exitCode !== null || child.signalCode !== null) return;
      // Keeps the event loop alive until the exit is seen.
      child.ref();
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exited;
    },
  };
}
