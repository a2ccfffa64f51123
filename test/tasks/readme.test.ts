/**
 * The code block of docs/tasks.md is examples/tasks/readme.ts (type-checked
 * with the project), with the package's import paths; and it runs: against
 * PostgreSQL (a database of its own), RabbitMQ and memcached it ships its
 * order and exits 0, and with its `shipments` table missing it fails loudly
 * instead of exiting 0 with nothing done.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { root } from '../helpers/package.js';
import { amqpUrl, testPool } from './helpers.js';

const example = path.join(root, 'examples', 'tasks', 'readme.ts');

test('the code block of docs/tasks.md is the type-checked examples/tasks/readme.ts', (t) => {
  const doc = readFileSync(path.join(root, 'docs', 'tasks.md'), 'utf8');
  const block = /```ts\n([\s\S]*?)```/.exec(doc)?.[1];
  t.truthy(block, 'docs/tasks.md has a ts code block');
  const source = readFileSync(example, 'utf8');
  const body = source
    .slice(source.indexOf('// README-BEGIN\n') + '// README-BEGIN\n'.length, source.indexOf('// README-END'))
    .replace("'../../src/tasks/index.js'", "'memlock/tasks'")
    .replace("'../../src/index.js'", "'memlock'");
  t.is(block, body);
});

/** Runs a copy of the example in a database of its own; resolves with its exit code and output. */
async function runExample(
  mc: MemcachedProcess,
  file: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const admin = testPool(1);
  const database = `memlock_readme_${randomBytes(4).toString('hex')}`;
  await admin.query(`CREATE DATABASE ${database}`);
  try {
    const url = new URL(`postgres://${process.env['PGHOST'] ?? '127.0.0.1'}:${process.env['PGPORT'] ?? 5432}/`);
    url.username = process.env['PGUSER'] ?? 'postgres';
    if (process.env['PGPASSWORD'] !== undefined) url.password = process.env['PGPASSWORD'];
    url.pathname = `/${database}`;
    const child = spawn(process.execPath, ['--import=tsx', file], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: url.href, MEMCACHE_SERVERS: mc.address, AMQP_URL: amqpUrl },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const killer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearTimeout(killer);
    return { code, stdout, stderr };
  } finally {
    await admin.query(`DROP DATABASE ${database} WITH (FORCE)`);
    await admin.end();
  }
}

test.serial('the docs/tasks.md example ships its order (3 steps) and exits 0', async (t) => {
  t.timeout(60_000);
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const { code, stdout, stderr } = await runExample(mc, example);
  t.is(code, 0, stderr);
  t.regex(stdout, /^order-[\w-]+ shipped: 3 steps applied\n$/);
});

test.serial('without its shipments table the example fails loudly (exit 1, the error on stderr)', async (t) => {
  t.timeout(60_000);
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const source = readFileSync(example, 'utf8');
  const create = "await pool.query('CREATE TABLE IF NOT EXISTS shipments";
  t.true(source.includes(create), 'the example creates its table');
  const broken = path.join(path.dirname(example), `.readme-broken-${randomBytes(4).toString('hex')}.ts`);
  writeFileSync(broken, source.replace(create, `// ${create}`));
  t.teardown(() => rmSync(broken, { force: true }));
  const { code, stdout, stderr } = await runExample(mc, broken);
  t.is(code, 1, `exit ${String(code)}; stdout: ${stdout}`);
  t.regex(stderr, /relation "shipments" does not exist/);
  t.notRegex(stdout, /shipped/);
});
