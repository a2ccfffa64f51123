/**
 * A fresh machine without memcached (a PATH with node, npm and sh, nothing
 * else): `npm test` stops at once with one line naming what to install, and
 * `npm run bench` runs anyway on the built-in stand-in, labelled as such.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { root } from '../helpers/package.js';

const INSTALL_LINE =
  'memcached not found on PATH: apt-get install memcached (or brew install memcached); the server tests start their own. `npm run test:unit` runs the fast tier without it.';

/** npm: beside this node if it is there (Node 20 here), else the first on PATH (Node 24 from npm has none beside it). */
function npmBin(): string {
  const dirs = [path.dirname(process.execPath), ...(process.env.PATH ?? '').split(path.delimiter)];
  const found = dirs.map((dir) => path.join(dir, 'npm')).find((file) => existsSync(file));
  if (found === undefined) throw new Error('npm not found beside node or on PATH');
  return found;
}

/** A directory holding only node, npm and sh: a PATH on which memcached is not found. */
function pathWithoutMemcached(t: import('ava').ExecutionContext): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'memlock-no-memcached-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  symlinkSync(process.execPath, path.join(dir, 'node'));
  symlinkSync(npmBin(), path.join(dir, 'npm'));
  symlinkSync('/bin/sh', path.join(dir, 'sh'));
  return dir;
}

function run(
  file: string,
  args: string[],
  options: { cwd: string; env: NodeJS.ProcessEnv },
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { ...options, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) =>
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr }),
    );
  });
}

test('npm test without memcached: one line naming what to install, exit 1, before any test runs', async (t) => {
  const scripts = (
    JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  ).scripts;
  // Checked first, so a missing check fails here instead of running the whole suite from inside it.
  for (const name of ['test', 'test:servers', 'test:meta', 'test:text'])
    t.regex(scripts[name] ?? '', /^node tools\/require-memcached\.mjs && /, name);
  if (!scripts.test?.startsWith('node tools/require-memcached.mjs && ')) return;

  const dir = pathWithoutMemcached(t);
  const env = { ...process.env, PATH: dir, NODE_OPTIONS: '' };
  const npmTest = await run(path.join(dir, 'npm'), ['test'], { cwd: root, env });
  t.is(npmTest.code, 1, npmTest.stderr);
  const ours = npmTest.stderr.split('\n').filter((line) => line.includes('memcached'));
  t.deepEqual(ours, [INSTALL_LINE], 'one line, naming what to install');
  t.notRegex(npmTest.stdout + npmTest.stderr, /✔|✘|tests? (passed|failed)/, 'no test ran');

  const direct = await run(process.execPath, [path.join(root, 'tools', 'require-memcached.mjs')], { cwd: root, env });
  t.is(direct.code, 1);
  t.is(direct.stderr, `${INSTALL_LINE}\n`);
  const withMemcached = await run(process.execPath, [path.join(root, 'tools', 'require-memcached.mjs')], {
    cwd: root,
    env: process.env,
  });
  t.deepEqual(withMemcached, { code: 0, stdout: '', stderr: '' }, 'silent when memcached is there');
});

interface BenchDocument {
  system: { memcached: string | null; memcacheServers: string | null };
  results: Array<{ scenario: string; subject: string; opsPerSec: number | null }>;
  scenarios: Array<{
    scenario: string;
    title: string;
    notes: string[];
    skipped: Array<{ subject: string; reason: string }>;
  }>;
}

test('npm run bench without memcached runs memlock on the stand-in, labelled, and says how to get the real thing', async (t) => {
  const dir = pathWithoutMemcached(t);
  const results = mkdtempSync(path.join(os.tmpdir(), 'memlock-bench-results-'));
  t.teardown(() => rmSync(results, { recursive: true, force: true }));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: dir,
    NODE_OPTIONS: '',
    MEMCACHE_SERVERS: undefined,
    CI: undefined,
    // Nothing else answers either: only the stand-in runs.
    REDIS_URL: 'redis://127.0.0.1:1',
    PGPORT: '1',
  };
  const bench = await run(
    process.execPath,
    [
      '--import=tsx',
      'cli.ts',
      '--scenario',
      'refused',
      '--duration',
      '0.2',
      '--rounds',
      '1',
      '--json',
      '--results',
      results,
    ],
    { cwd: path.join(root, 'bench'), env },
  );
  t.is(bench.code, 0, bench.stderr);
  const doc = JSON.parse(bench.stdout) as BenchDocument;
  t.is(doc.system.memcached, null, 'no memcached version claimed');
  t.regex(doc.system.memcacheServers ?? '', /stand-in.*not memcached/);
  const [standIn, refused] = doc.scenarios;
  t.is(standIn?.scenario, 'stand-in');
  t.regex(standIn?.title ?? '', /stand-in \(memlock\/testing\), NOT memcached/);
  t.deepEqual(
    [...new Set(doc.results.map((r) => `${r.scenario}: ${r.subject}`))].sort(),
    ['stand-in: lock/unlock (stand-in)', 'stand-in: refused (stand-in)'],
    'every row is a stand-in row and says so; no stand-in figure in a memcached table',
  );
  t.true(
    doc.results.every((r) => (r.opsPerSec ?? 0) > 0),
    'it measured something',
  );
  t.regex(standIn?.notes.join(' ') ?? '', /apt-get install memcached/);
  t.is(refused?.scenario, 'refused');
  t.true(refused!.skipped.some((s) => s.subject === 'memlock' && /see the stand-in table/.test(s.reason)));
  t.regex(
    bench.stderr,
    /Ran on the built-in stand-in, not memcached\. For memcached itself: apt-get install memcached/,
  );
  const written = JSON.parse(readFileSync(path.join(results, 'latest.json'), 'utf8')) as BenchDocument;
  t.is(written.scenarios[0]?.scenario, 'stand-in', 'the report file says so too');
});
