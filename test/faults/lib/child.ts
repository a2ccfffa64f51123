/** Child processes running `.mts` fixtures under tsx, talking JSON lines on stdout. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Fixture {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Every JSON line the child printed so far. */
  readonly messages: Array<Record<string, unknown>>;
  /** Resolves with the first message whose `event` is `event` (rejects after `timeoutMs` or when the child exits first). */
  next(event: string, timeoutMs: number): Promise<Record<string, unknown>>;
  /** Resolves with the exit code once the child exited. */
  readonly exited: Promise<number | null>;
  /** Sends a line on the child's stdin. */
  send(line: string): void;
  stderr(): string;
  /** SIGKILL if still running. */
  kill(): Promise<void>;
}

export function fixturePath(name: string): string {
  return fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
}

export function startFixture(name: string, env: Record<string, string>): Fixture {
  const child = spawn(process.execPath, ['--import=tsx', fixturePath(name)], {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const messages: Array<Record<string, unknown>> = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (s: string) => {
    stderr = (stderr + s).slice(-8192);
  });
  child.stdin!.on('error', () => undefined);
  const lines = readline.createInterface({ input: child.stdout! });
  lines.on('line', (line) => {
    try {
      messages.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      messages.push({ event: 'text', line });
    }
    for (const wake of waiters) wake();
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      for (const wake of waiters) wake();
      resolve(code);
    });
  });
  const fixture: Fixture = {
    child,
    pid: child.pid!,
    messages,
    exited,
    stderr: () => stderr,
    send: (line) => {
      child.stdin!.write(`${line}\n`);
    },
    next: async (event, timeoutMs) => {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const found = messages.find((m) => m.event === event);
        if (found) return found;
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(
            `fixture ${name} exited (${child.exitCode ?? child.signalCode}) before '${event}': ${stderr}`,
          );
        }
        const left = deadline - performance.now();
        if (left <= 0) throw new Error(`fixture ${name}: no '${event}' within ${timeoutMs} ms; stderr: ${stderr}`);
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            waiters.delete(wake);
            clearTimeout(timer);
            resolve();
          };
          const timer = setTimeout(wake, left);
          waiters.add(wake);
        });
      }
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
  return fixture;
}

/** One-letter scheduler state of a pid ('T' = stopped), or null without /proc. */
export function procState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) || null;
  } catch {
    return null;
  }
}

/** Sends SIGSTOP/SIGCONT and waits until /proc shows the new state. */
export async function signalAndWait(pid: number, signal: 'SIGSTOP' | 'SIGCONT'): Promise<void> {
  process.kill(pid, signal);
  const want = (s: string | null): boolean => s === null || (signal === 'SIGSTOP' ? s === 'T' : s !== 'T');
  for (let i = 0; i < 500 && !want(procState(pid)); i++) await sleep(2);
}
