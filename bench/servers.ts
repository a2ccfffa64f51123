// The servers the benchmark talks to: starting a private memcached, checking
// that memcached / Redis / PostgreSQL answer, reading their versions, and
// counting operations on the server side (so "operations per commit" is what
// the server saw, not what a client library claims it sent).

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { delimiter, join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Avail, MemcacheTarget, RedisTarget } from './types.js';
import { describeError, sleep } from './measure.js';

// ---------------------------------------------------------------- memcached

/**
 * One text-protocol connection to a memcached server. memcached detects the
 * protocol per connection, so this works next to memjs's binary connections.
 * Commands are serialized: each waits for the previous reply.
 */
export class MemcacheText {
  private socket: net.Socket | null = null;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly host: string,
    readonly port: number,
    private readonly timeoutMs = 2000,
  ) {}

  private connect(): Promise<net.Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: this.host, port: this.port });
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect ${this.host}:${this.port} timed out`));
      }, this.timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        this.socket = socket;
        resolve(socket);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      });
    });
  }

  /** Sends `line` and resolves with the reply once `done(reply)` says it is complete. */
  command(line: string, done: (reply: string) => boolean): Promise<string> {
    const run = async (): Promise<string> => {
      const socket = await this.connect();
      return await new Promise<string>((resolve, reject) => {
        let reply = '';
        const cleanup = (): void => {
          clearTimeout(timer);
          socket.off('data', onData);
          socket.off('error', onError);
          socket.off('close', onClose);
        };
        const fail = (err: Error): void => {
          cleanup();
          socket.destroy();
          this.socket = null;
          reject(err);
        };
        const onData = (chunk: Buffer): void => {
          reply += chunk.toString('latin1');
          if (done(reply)) {
            cleanup();
            resolve(reply);
          }
        };
        const onError = (err: Error): void => fail(err);
        const onClose = (): void => fail(new Error('connection closed'));
        const timer = setTimeout(() => fail(new Error(`'${line.split(' ')[0] ?? ''}' timed out`)), this.timeoutMs);
        socket.on('data', onData);
        socket.once('error', onError);
        socket.once('close', onClose);
        socket.write(`${line}\r\n`);
      });
    };
    const result = this.chain.then(run, run);
    this.chain = result.catch(() => undefined);
    return result;
  }

  async version(): Promise<string> {
    const reply = await this.command('version', (r) => r.endsWith('\r\n'));
    const match = /^VERSION (\S+)/.exec(reply);
    if (!match?.[1]) throw new Error(`unexpected reply to version: ${reply.trim()}`);
    return match[1];
  }

  async stats(): Promise<Record<string, number>> {
    const reply = await this.command('stats', (r) => r.endsWith('END\r\n'));
    const out: Record<string, number> = {};
    for (const line of reply.split('\r\n')) {
      const [tag, name, value] = line.split(' ');
      if (tag === 'STAT' && name && value !== undefined) out[name] = Number(value);
    }
    return out;
  }

  async delete(key: string): Promise<boolean> {
    const reply = await this.command(`delete ${key}`, (r) => r.endsWith('\r\n'));
    return reply.startsWith('DELETED');
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }
}

/**
 * Operations a memcached counted, summed the way a lock protocol spends them:
 * cmd_get (reads, incl. gets for CAS), cmd_set (set, add, replace and CAS
 * writes all count here), cmd_touch, deletes (hits + misses) and incr/decr.
 * `version`, `stats` and `noop` are not counted by the server.
 */
export function countMemcacheOps(s: Record<string, number>): number {
  const keys = [
    'cmd_get',
    'cmd_set',
    'cmd_touch',
    'delete_hits',
    'delete_misses',
    'incr_hits',
    'incr_misses',
    'decr_hits',
    'decr_misses',
  ];
  return keys.reduce((sum, k) => sum + (s[k] ?? 0), 0);
}

export function parseServers(servers: string): { host: string; port: number }[] {
  return servers
    .split(/[,\s]+/)
    .filter(Boolean)
    .map((entry) => {
      // memjs accepts user:pass@host:port; only host and port matter for the stats socket.
      const hostPort = entry.includes('@') ? entry.slice(entry.lastIndexOf('@') + 1) : entry;
      const idx = hostPort.lastIndexOf(':');
      const host = idx > 0 ? hostPort.slice(0, idx).replace(/^\[|\]$/g, '') : hostPort;
      const port = idx > 0 ? Number(hostPort.slice(idx + 1)) : 11211;
      return { host: host || 'localhost', port };
    });
}

export interface MemcacheProbe {
  target: MemcacheTarget;
  versions: string[];
  close: () => void;
}

/**
 * Connects to every server of the list; fails with a one-line reason if any
 * does not answer. `ownPid`: the memcached the bench started, whose CPU time
 * it can read (servers given in MEMCACHE_SERVERS are not ours to measure).
 */
export async function probeMemcache(servers: string, ownPid: number | null = null): Promise<Avail<MemcacheProbe>> {
  const list = parseServers(servers);
  if (list.length === 0) return { ok: false, reason: `no memcache servers in '${servers}'` };
  const conns = list.map((s) => new MemcacheText(s.host, s.port));
  const close = (): void => conns.forEach((c) => c.close());
  try {
    const versions = await Promise.all(conns.map((c) => c.version()));
    const stats = async (): Promise<Record<string, number>> => {
      const sum: Record<string, number> = {};
      for (const s of await Promise.all(conns.map((c) => c.stats()))) {
        for (const [k, v] of Object.entries(s)) sum[k] = (sum[k] ?? 0) + v;
      }
      return sum;
    };
    const target: MemcacheTarget = {
      servers,
      stats,
      ops: async () => countMemcacheOps(await stats()),
      // The bench only deletes behind a holder's back with a single server (loss-detection needs to know where the key lives).
      deleteRaw: (key) => (conns[0] as MemcacheText).delete(key),
      cpuMs: () => (ownPid ? procCpuMs(ownPid) : null),
    };
    return { ok: true, value: { target, versions, close } };
  } catch (err) {
    close();
    return { ok: false, reason: `memcached unreachable at ${servers} (${describeError(err)})` };
  }
}

function findOnPath(name: string): string | null {
  const dirs = (process.env.PATH ?? '').split(delimiter).concat(['/usr/bin', '/usr/local/bin', '/usr/sbin']);
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface OwnMemcached {
  servers: string;
  args: string[];
  /** The memcached process, for its CPU time (procCpuMs). */
  pid: number;
  stop: () => void;
}

let clockTicks: number | null = null;

/** USER_HZ, the unit of /proc/PID/stat's times (100 on every common Linux; getconf says for sure). */
function ticksPerSecond(): number {
  if (clockTicks === null) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/**
 * CPU time (user + system, ms) a process has used so far, from
 * /proc/PID/stat; null where there is no /proc or the process is gone.
 * Resolution: one clock tick (10 ms).
 */
export function procCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces: fields after its closing parenthesis start at field 3.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(rest[11]) + Number(rest[12]); // utime (field 14) + stime (field 15)
    return Number.isFinite(ticks) ? (ticks * 1000) / ticksPerSecond() : null;
  } catch {
    return null;
  }
}

/**
 * Starts a private memcached on a free loopback port and waits until it
 * answers. The caller must call stop(); cli.ts also does it from process
 * 'exit' and signal handlers so the child never outlives the run.
 */
export async function startMemcached(): Promise<Avail<OwnMemcached>> {
  const bin = findOnPath('memcached');
  if (!bin) return { ok: false, reason: 'memcached not found on PATH and MEMCACHE_SERVERS is not set' };
  let lastError = 'unknown error';
  // The free port can be taken between probing and binding; try a few times.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    // -m 256: 10,000 held locks and the other scenarios' keys fit without eviction.
    // -c 4096: the dedupe and prefilter scenarios open dozens of connections.
    const args = ['-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', '256', '-c', '4096'];
    // memcached refuses to start as root unless told which user to run as.
    if (process.getuid?.() === 0) args.push('-u', 'root');
    const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    let exited = false;
    child.once('exit', () => {
      exited = true;
    });
    child.once('error', (err) => {
      exited = true;
      stderr += err.message;
    });
    const stop = (): void => {
      if (!exited && child.exitCode === null) child.kill('SIGKILL');
    };
    const conn = new MemcacheText('127.0.0.1', port, 500);
    for (let i = 0; i < 50 && !exited; i++) {
      try {
        await conn.version();
        conn.close();
        // Do not let the child's pipes keep the benchmark process alive.
        child.stderr?.destroy();
        child.unref();
        return { ok: true, value: { servers: `127.0.0.1:${port}`, args: [bin, ...args], pid: child.pid ?? 0, stop } };
      } catch {
        await sleep(100);
      }
    }
    conn.close();
    stop();
    lastError = stderr.trim().split('\n')[0] || 'did not answer within 5 s';
  }
  return { ok: false, reason: `could not start memcached (${lastError})` };
}

// -------------------------------------------------------------------- Redis

export function redisUrl(): string {
  return process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
}

/** A Redis client that fails fast instead of queueing commands forever while disconnected. */
export function newRedis(url: string): Redis {
  return new Redis(url, {
    lazyConnect: true,
    connectTimeout: 2000,
    maxRetriesPerRequest: 1,
    retryStrategy: (times) => (times > 3 ? null : 100),
  });
}

/**
 * Redis lock round trips as the server counted them in INFO commandstats.
 * redlock issues every lock operation as one script call (EVALSHA, EVAL on a
 * cache miss); the commands a script runs inside are counted by Redis too, so
 * only the script calls are summed: that is the round-trip count.
 */
function countRedisScriptCalls(info: string): number {
  let sum = 0;
  for (const line of info.split('\r\n')) {
    const match = /^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro):calls=(\d+)/.exec(line);
    if (match?.[2]) sum += Number(match[2]);
  }
  return sum;
}

/** The Redis server's own CPU time (used_cpu_user + used_cpu_sys of INFO cpu), ms; null when not reported. */
function redisCpuMs(info: string): number | null {
  const seconds = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? NaN);
  const total = seconds('used_cpu_user') + seconds('used_cpu_sys');
  return Number.isFinite(total) ? total * 1000 : null;
}

export interface RedisProbe {
  target: RedisTarget;
  version: string;
  close: () => Promise<void>;
}

export async function probeRedis(): Promise<Avail<RedisProbe>> {
  const url = redisUrl();
  // One attempt, no reconnects: a probe answers quickly either way.
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: 2000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  // ioredis reports the cause (ECONNREFUSED, auth...) as an event and rejects with a generic error; keep the cause.
  let cause: unknown = null;
  client.on('error', (err) => {
    cause ??= err;
  });
  try {
    await client.connect();
    const info = await client.info('server');
    const version = /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown';
    const target: RedisTarget = {
      url,
      ops: async () => countRedisScriptCalls(await client.info('commandstats')),
      cpuMs: async () => redisCpuMs(await client.info('cpu')),
    };
    return {
      ok: true,
      value: { target, version, close: async () => void (await client.quit().catch(() => client.disconnect())) },
    };
  } catch (err) {
    client.disconnect();
    return { ok: false, reason: `Redis unreachable at ${url} (${describeError(cause ?? err)})` };
  }
}

// --------------------------------------------------------------- PostgreSQL

/** libpq's default user: the OS user (pg only looks at $USER, which is unset in some containers and CI shells). */
function pgUser(): string {
  return process.env.PGUSER ?? process.env.USER ?? os.userInfo().username;
}

/** Connection settings: pg reads the usual PG* variables itself; the user fallback and the timeout are ours. */
export function pgConfig(): pg.PoolConfig {
  return { user: pgUser(), connectionTimeoutMillis: 3000, application_name: 'memlock-bench' };
}

export function describePg(): string {
  const env = process.env;
  return `${pgUser()}@${env.PGHOST ?? 'localhost'}:${env.PGPORT ?? '5432'}/${env.PGDATABASE ?? pgUser()}`;
}

export async function probePg(): Promise<Avail<{ config: pg.PoolConfig; version: string }>> {
  const config = pgConfig();
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
    const res = await client.query<{ server_version: string }>('SHOW server_version');
    const version = (res.rows[0]?.server_version ?? 'unknown').split(' ')[0] ?? 'unknown';
    return { ok: true, value: { config, version } };
  } catch (err) {
    return { ok: false, reason: `PostgreSQL unreachable at ${describePg()} (${describeError(err)})` };
  } finally {
    await client.end().catch(() => undefined);
  }
}
