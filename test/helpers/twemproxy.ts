/**
 * twemproxy (`nutcracker`, Debian package `nutcracker`) for tests: a proxy
 * on free loopback ports in front of memcached servers the tests started,
 * from a generated YAML config. Killed with the test process like memcached
 * (an 'exit' hook, and the kernel's parent-death signal via setpriv).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { deathSigPrefix, freePort } from './child-process.js';

const HOST = '127.0.0.1';

/** Options of {@link startTwemproxy}. */
export interface TwemproxyOptions {
  /**
   * Eject a server after `serverFailureLimit` failures and send its keys to
   * the others (twemproxy's failover). @default false
   */
  readonly autoEjectHosts?: boolean;
  /** Failures before an ejection. @default 2 */
  readonly serverFailureLimit?: number;
  /** How long an ejected server stays out. @default 30000 */
  readonly serverRetryTimeoutMs?: number;
  /** twemproxy's own deadline for a server's reply (none by default: it waits). */
  readonly timeoutMs?: number;
  /** How long to wait for it to accept connections. @default 5000 */
  readonly startTimeoutMs?: number;
}

/** A running nutcracker. */
export interface Twemproxy {
  readonly host: string;
  readonly port: number;
  /** '127.0.0.1:PORT', what clients connect to. */
  readonly address: string;
  readonly pid: number;
  /** Its log (`-o`), for failure messages. */
  log(): string;
  /** SIGTERM, wait for the exit, remove the config directory. */
  stop(): Promise<void>;
}

/** The binary: NUTCRACKER, else /usr/sbin/nutcracker (Debian), else from PATH. */
function binary(): string {
  const explicit = process.env['NUTCRACKER'];
  if (explicit !== undefined && explicit !== '') return explicit;
  try {
    accessSync('/usr/sbin/nutcracker', fsConstants.X_OK);
    return '/usr/sbin/nutcracker';
  } catch {
    return 'nutcracker';
  }
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of running) child.kill('SIGKILL');
  });
}

/** The YAML config of one pool in front of `servers`. */
export function twemproxyConfig(
  listenPort: number,
  servers: readonly { host: string; port: number }[],
  options: TwemproxyOptions = {},
): string {
  const lines = [
    'memlock_test:',
    `  listen: ${HOST}:${listenPort}`,
    '  distribution: ketama',
    '  hash: fnv1a_64',
    // One connection per server: a client's requests reach memcached in the order it sent them.
    '  server_connections: 1',
    `  auto_eject_hosts: ${options.autoEjectHosts === true}`,
    `  server_failure_limit: ${options.serverFailureLimit ?? 2}`,
    `  server_retry_timeout: ${options.serverRetryTimeoutMs ?? 30_000}`,
    // Connected to every server from the start: the first request does not pay for it.
    '  preconnect: true',
  ];
  if (options.timeoutMs !== undefined) lines.push(`  timeout: ${options.timeoutMs}`);
  lines.push('  servers:');
  for (const [i, server] of servers.entries()) lines.push(`    - ${server.host}:${server.port}:1 s${i}`);
  return `${lines.join('\n')}\n`;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/**
 * Starts nutcracker in front of `servers` on free ports (listen and stats)
 * and resolves once it accepts connections. Retries with other ports when
 * one was taken meanwhile.
 */
export async function startTwemproxy(
  servers: readonly { host: string; port: number }[],
  options: TwemproxyOptions = {},
): Promise<Twemproxy> {
  installExitHook();
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnTwemproxy(servers, options);
    } catch (error) {
      if (attempt >= 5 || !(error instanceof Error && /in use|exited/i.test(error.message))) throw error;
    }
  }
}

async function spawnTwemproxy(
  servers: readonly { host: string; port: number }[],
  options: TwemproxyOptions,
): Promise<Twemproxy> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'memlock-twemproxy-'));
  const port = await freePort();
  const statsPort = await freePort();
  const conf = path.join(dir, 'nutcracker.yml');
  const logFile = path.join(dir, 'nutcracker.log');
  writeFileSync(conf, twemproxyConfig(port, servers, options));
  const args = ['-c', conf, '-s', String(statsPort), '-a', HOST, '-p', path.join(dir, 'nutcracker.pid'), '-o', logFile];
  const [cmd = binary(), ...cmdArgs] = [...deathSigPrefix, binary(), ...args];
  const child = spawn(cmd, cmdArgs, { stdio: 'ignore' });
  child.unref();
  running.add(child);
  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('error', (error) => {
      spawnError = error;
      resolve();
    });
    child.once('exit', () => resolve());
  });
  const log = (): string => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const cleanup = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null && spawnError === undefined) {
      child.ref();
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
      child.unref();
    }
    running.delete(child);
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + (options.startTimeoutMs ?? 5000);
  for (;;) {
    if (spawnError !== undefined) {
      await cleanup();
      throw new Error(`cannot spawn nutcracker (${binary()}): ${spawnError.message}`, { cause: spawnError });
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = log();
      await cleanup();
      throw new Error(`nutcracker exited during startup (code ${child.exitCode}): ${text.trim().slice(-2000)}`);
    }
    if (await accepts(port)) break;
    if (Date.now() > deadline) {
      const text = log();
      await cleanup();
      throw new Error(`nutcracker did not accept connections on ${HOST}:${port}: ${text.trim().slice(-2000)}`);
    }
    await sleep(20);
  }
  return {
    host: HOST,
    port,
    address: `${HOST}:${port}`,
    pid: child.pid as number,
    log,
    stop: cleanup,
  };
}
