/**
 * Real memcached processes for tests. Each test file starts its own server(s)
 * on free loopback ports, so ava can run files in parallel; every process is
 * SIGKILLed when the test process exits (an 'exit' hook, plus the kernel's
 * parent-death signal via setpriv for deaths that skip the hook), so a
 * failing or timed-out test leaves nothing behind.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { deathSigPrefix, freePort } from './child-process.js';
import { startRecordingProxy } from './recording-proxy.js';
import { startTwemproxy } from './twemproxy.js';
import {
  binarySaslClient,
  textClient,
  type RawClient,
  type RawEntry,
  type RawOptions,
  type SaslCredentials,
} from './raw-protocol.js';

export type { RawEntry, RawOptions, SaslCredentials } from './raw-protocol.js';
export { freePort } from './child-process.js';

/** Options of {@link startMemcached}. */
export interface MemcachedOptions {
  /** Fixed port; default: a free port picked by the OS. */
  port?: number;
  /** Item memory (`-m`), default 64. */
  memoryMb?: number;
  /** Appended to the command line as is. */
  extraArgs?: string[];
  /**
   * Require SASL PLAIN with this one user. The server then speaks the binary
   * protocol only (memcached refuses ASCII with SASL); the raw helpers switch
   * to the binary protocol and authenticate on their own.
   */
  sasl?: SaslCredentials;
  /** How long to wait for the server to accept connections, default 5000 ms. */
  startTimeoutMs?: number;
  /**
   * No front even when the environment asks for one (see {@link testFront}):
   * `address` is then memcached itself. For tests of binary-only clients.
   */
  direct?: boolean;
}

/** What the environment puts between the tests' clients and each memcached. */
export interface TestFront {
  /** MEMLOCK_TEST_VIA=twemproxy: a nutcracker in front of each memcached. */
  readonly twemproxy: boolean;
  /**
   * MEMLOCK_TEST_PROTOCOL=text without twemproxy: a recording proxy in front
   * that fails the test process on any command that is not classic text
   * protocol. (nutcracker itself drops a connection that sends a meta
   * command or a binary request; one hop is enough for the tests' short
   * deadlines on a busy machine.)
   */
  readonly classicOnly: boolean;
}

/** The front the environment asks for (`npm run test:text` sets it). */
export function testFront(): TestFront {
  const twemproxy = process.env['MEMLOCK_TEST_VIA'] === 'twemproxy';
  return { twemproxy, classicOnly: !twemproxy && process.env['MEMLOCK_TEST_PROTOCOL'] === 'text' };
}

/** A running front: where clients connect instead of memcached. */
interface Front {
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/** A `version` request through `target`; resolves once it is answered. */
function warmUp(target: { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(target);
    const timer = setTimeout(() => socket.destroy(new Error('front: no answer to version within 5 s')), 5000);
    socket.on('connect', () => socket.write('version\r\n'));
    socket.on('data', (chunk: Buffer) => {
      if (!chunk.includes('\r\n')) return;
      clearTimeout(timer);
      socket.destroy();
      resolve();
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/**
 * An uncaught exception fails the ava test file, whichever test was running:
 * memlock must never send such a command with the text protocol.
 */
function failOnViolation(violation: string): void {
  process.nextTick(() => {
    throw new Error(`MEMLOCK_TEST_PROTOCOL=text, but a client sent a non-classic command: ${violation}`);
  });
}

const HOST = '127.0.0.1';
const STDERR_KEEP = 8192;

/** Every instance started in this process, killed on exit. */
const registry = new Set<MemcachedProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const m of registry) m.killSync();
  });
}

/** Creates a private SASL config dir (sasldb + memcached.conf) for one user. */
async function makeSaslDir(creds: SaslCredentials): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'memlock-sasl-'));
  const db = path.join(dir, 'sasldb');
  // memcached passes gethostname() as the user realm, so the user must live in that realm.
  await new Promise<void>((resolve, reject) => {
    const child = execFile(
      'saslpasswd2',
      ['-c', '-p', '-a', 'memcached', '-u', os.hostname(), '-f', db, creds.username],
      (err, _stdout, stderr) =>
        err ? reject(new Error(`saslpasswd2 failed: ${err.message} ${stderr}`, { cause: err })) : resolve(),
    );
    child.stdin?.end(creds.password);
  });
  writeFileSync(path.join(dir, 'memcached.conf'), `mech_list: plain\nsasldb_path: ${db}\n`);
  return dir;
}

/** Reads the one-letter scheduler state of a pid from /proc ('T' = stopped), or null. */
function procState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // "pid (comm) S ..." - comm may contain spaces/parens, so split after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) || null;
  } catch {
    return null;
  }
}

/**
 * One memcached server process. `pid` changes across {@link restart}; the
 * port does not. The child handle is unref'd so a forgotten server never
 * keeps the test process alive (the exit hook still kills it).
 */
export class MemcachedProcess {
  readonly host = HOST;
  readonly port: number;
  /** SASL credentials the server requires, if any. */
  readonly sasl: SaslCredentials | undefined;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stderrTail = '';
  private paused = false;
  private front: Front | undefined;
  private readonly raw: RawClient;

  /** @internal use {@link startMemcached}. */
  constructor(
    port: number,
    private readonly options: MemcachedOptions,
    private readonly saslDir: string | undefined,
  ) {
    this.port = port;
    this.sasl = options.sasl;
    this.raw = options.sasl ? binarySaslClient(this, options.sasl) : textClient(this);
  }

  /**
   * 'host:port', what memjs and Memlock take as a server: memcached itself,
   * or the front the environment asks for (see {@link testFront}), which
   * stays up while memcached is killed, paused or restarted.
   */
  get address(): string {
    return `${this.endpoint.host}:${this.endpoint.port}`;
  }

  /** Host and port of {@link address}, e.g. for a fault proxy in front. */
  get endpoint(): { host: string; port: number } {
    return this.front ?? { host: this.host, port: this.port };
  }

  /** 'host:port' of memcached itself, bypassing any front. */
  get serverAddress(): string {
    return `${this.host}:${this.port}`;
  }

  /** @internal puts the fronts `wanted` in front of this server. */
  async openFront(wanted: TestFront): Promise<void> {
    const closers: Array<() => Promise<void>> = [];
    let target: { host: string; port: number } = { host: this.host, port: this.port };
    try {
      if (wanted.twemproxy) {
        const proxy = await startTwemproxy([target]);
        closers.push(() => proxy.stop());
        target = proxy;
      }
      if (wanted.classicOnly) {
        const recorder = await startRecordingProxy(target, {
          classicOnly: true,
          onViolation: failOnViolation,
          ref: false,
        });
        closers.push(() => recorder.close());
        target = recorder;
      }
    } catch (error) {
      await Promise.all(closers.map((close) => close()));
      throw error;
    }
    if (closers.length === 0) return;
    // One round trip through the whole chain, so the tests' first requests
    // do not pay for cold connections and code (their deadlines are short).
    await warmUp(target).catch(async (error: unknown) => {
      await Promise.all(closers.map((close) => close()));
      throw error;
    });
    this.front = {
      host: target.host,
      port: target.port,
      close: async () => {
        // Outermost first.
        for (const close of closers.reverse()) await close();
      },
    };
  }

  /** Pid of the current process (undefined before the first start). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** True while the process is alive (paused counts as alive). */
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Last few KB memcached wrote to stderr (for error messages). */
  get stderr(): string {
    return this.stderrTail;
  }

  /** @internal spawns the process and waits until it answers on the port. */
  async spawn(): Promise<void> {
    const args = [
      '-l',
      HOST,
      '-p',
      String(this.port),
      '-U',
      '0',
      '-m',
      String(this.options.memoryMb ?? 64),
      '-t',
      '1',
      '-c',
      '1024',
      '-u',
      'root',
      ...(this.sasl ? ['-S', '-B', 'binary'] : []),
      ...(this.options.extraArgs ?? []),
    ];
    const env = this.saslDir ? { ...process.env, SASL_CONF_PATH: this.saslDir } : process.env;
    this.stderrTail = '';
    this.paused = false;
    const [cmd = 'memcached', ...cmdArgs] = [...deathSigPrefix, 'memcached', ...args];
    const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'ignore', 'pipe'], env });
    this.child = child;
    let spawnError: Error | undefined;
    this.exited = new Promise<void>((resolve) => {
      child.once('error', (err) => {
        spawnError = err;
        resolve();
      });
      child.once('exit', () => resolve());
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => {
      this.stderrTail = (this.stderrTail + s).slice(-STDERR_KEEP);
    });
    child.stderr?.on('error', () => undefined);
    child.unref();
    (child.stderr as net.Socket | null)?.unref?.();

    const timeoutMs = this.options.startTimeoutMs ?? 5000;
    const deadline = Date.now() + timeoutMs;
    let lastErr: unknown;
    while (Date.now() < deadline) {
      if (spawnError) {
        throw new Error(`cannot spawn memcached (is it on PATH?): ${spawnError.message}`, { cause: spawnError });
      }
      if (!this.running) {
        await sleep(20); // let the stderr pipe drain
        throw new MemcachedStartError(
          `memcached exited during startup (code ${child.exitCode}, signal ${child.signalCode}) on port ${this.port}: ${this.stderrTail.trim()}`,
          this.stderrTail,
        );
      }
      try {
        // Checking the pid guards against another server that holds this port.
        const stats = await this.raw.stats({ timeoutMs: 250 });
        if (stats['pid'] === String(child.pid)) return;
        lastErr = new Error(`port ${this.port} answered with pid ${stats['pid']}, expected ${child.pid}`);
      } catch (err) {
        lastErr = err;
      }
      await sleep(20);
    }
    await this.kill();
    throw new MemcachedStartError(
      `memcached did not come up on ${this.address} within ${timeoutMs} ms (last probe: ${String(lastErr)}); stderr: ${this.stderrTail.trim()}`,
      this.stderrTail,
    );
  }

  /**
   * Sends `signal` (default SIGKILL) and resolves once the process exited.
   * A paused process is continued so SIGTERM can take effect; if it has not
   * exited 5 s later it is SIGKILLed.
   */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return this.exited;
    child.ref(); // keep the event loop alive while we wait for the exit
    try {
      child.kill(signal);
      if (this.paused && signal !== 'SIGKILL') child.kill('SIGCONT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(timer);
    } finally {
      child.unref();
      this.paused = false;
    }
  }

  /** Graceful stop: SIGTERM and wait for the exit; closes the front too. */
  async stop(): Promise<void> {
    await Promise.all([this.kill('SIGTERM'), this.closeFront()]);
  }

  /** Closes the front, if any; `address` is memcached itself from then on. */
  async closeFront(): Promise<void> {
    const front = this.front;
    this.front = undefined;
    await front?.close();
  }

  /**
   * Kills the process (SIGKILL: all entries are lost, CAS counter restarts)
   * and starts a fresh one on the same port, retrying while the port is busy.
   */
  async restart(): Promise<void> {
    await this.kill();
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        await this.spawn();
        return;
      } catch (err) {
        if (!(err instanceof MemcachedStartError && /in use/i.test(err.stderr)) || Date.now() > deadline) throw err;
        await sleep(50);
      }
    }
  }

  /** SIGSTOP: the server keeps its sockets but answers nothing (a hung server). */
  async pause(): Promise<void> {
    await this.signalAndWaitState('SIGSTOP', (s) => s === 'T');
    this.paused = true;
  }

  /** SIGCONT after {@link pause}. */
  async resume(): Promise<void> {
    await this.signalAndWaitState('SIGCONT', (s) => s !== 'T');
    this.paused = false;
  }

  private async signalAndWaitState(signal: NodeJS.Signals, ok: (state: string) => boolean): Promise<void> {
    const pid = this.pid;
    if (pid === undefined || !this.running) throw new Error(`memcached on ${this.address} is not running`);
    process.kill(pid, signal);
    const deadline = Date.now() + 1000;
    for (;;) {
      const state = procState(pid);
      if (state === null || ok(state)) return; // no /proc: best effort
      if (Date.now() > deadline)
        throw new Error(`memcached ${pid} did not reach the expected state after ${signal} (state ${state})`);
      await sleep(2);
    }
  }

  /** `flush_all`: drops every entry, behind the library's back. */
  flush(options?: RawOptions): Promise<void> {
    return this.raw.flush(options);
  }

  /** Reads an entry with its CAS (`gets`), without memjs. */
  rawGet(key: string, options?: RawOptions): Promise<RawEntry | null> {
    return this.raw.get(key, options);
  }

  /** Unconditionally writes an entry (flags 0), without memjs. */
  rawSet(key: string, value: string | Buffer, ttlSeconds = 0, options?: RawOptions): Promise<void> {
    return this.raw.set(key, value, ttlSeconds, options);
  }

  /**
   * Remaining TTL of an entry in whole seconds as the server counts it (meta
   * `mg <key> t`): -1 for no expiry, `null` when missing.
   */
  async rawTtl(key: string, options?: RawOptions): Promise<number | null> {
    return new Promise<number | null>((resolve, reject) => {
      const socket = net.createConnection({ host: this.host, port: this.port });
      let reply = '';
      const timer = setTimeout(() => socket.destroy(new Error(`mg ${key}: no reply`)), options?.timeoutMs ?? 2000);
      socket.setEncoding('latin1');
      socket.on('connect', () => socket.write(`mg ${key} t\r\n`));
      socket.on('data', (chunk: string) => {
        reply += chunk;
        const line = reply.split('\r\n')[0];
        if (!reply.includes('\r\n') || line === undefined) return;
        clearTimeout(timer);
        socket.destroy();
        if (line === 'EN') resolve(null);
        else if (/^HD t-?\d+$/.test(line)) resolve(Number(line.slice(4)));
        else reject(new Error(`mg ${key}: unexpected reply ${JSON.stringify(line)}`));
      });
      socket.on('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  /** Deletes an entry; resolves true if it existed. */
  rawDelete(key: string, options?: RawOptions): Promise<boolean> {
    return this.raw.delete(key, options);
  }

  /** Server `stats` as strings (e.g. `curr_connections`, `cmd_get`, `pid`). */
  stats(options?: RawOptions): Promise<Record<string, string>> {
    return this.raw.stats(options);
  }

  /** @internal synchronous SIGKILL for the exit hook; also removes the SASL dir. */
  killSync(): void {
    const pid = this.pid;
    if (pid !== undefined && this.running) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.removeSaslDir();
  }

  /** @internal */
  removeSaslDir(): void {
    if (this.saslDir) rmSync(this.saslDir, { recursive: true, force: true });
  }
}

/** Startup failure; `stderr` holds what memcached printed. */
export class MemcachedStartError extends Error {
  override name = 'MemcachedStartError';
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/**
 * Starts a memcached on 127.0.0.1 (a free port unless `port` is given) and
 * resolves once it answers `stats` with its own pid. Rejects with memcached's
 * stderr if it does not come up within `startTimeoutMs`.
 */
export async function startMemcached(options: MemcachedOptions = {}): Promise<MemcachedProcess> {
  installExitHook();
  const saslDir = options.sasl ? await makeSaslDir(options.sasl) : undefined;
  // With an OS-picked port another process may grab it between our probe and
  // memcached's bind; then simply pick another one.
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort());
    const m = new MemcachedProcess(port, options, saslDir);
    registry.add(m);
    try {
      await m.spawn();
      if (options.sasl === undefined && options.direct !== true) {
        await m.openFront(testFront()).catch(async (error: unknown) => {
          await m.kill();
          throw error;
        });
      }
      return m;
    } catch (err) {
      registry.delete(m);
      const busy = err instanceof MemcachedStartError && /in use/i.test(err.stderr);
      if (options.port !== undefined || !busy || attempt >= 5) {
        m.removeSaslDir();
        throw err;
      }
    }
  }
}

/** Kills every server started by this process and forgets them. */
export async function stopAll(): Promise<void> {
  const all = [...registry];
  registry.clear();
  await Promise.all(
    all.map(async (m) => {
      await Promise.all([m.kill(), m.closeFront()]);
      m.removeSaslDir();
    }),
  );
}
