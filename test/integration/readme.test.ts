/**
 * Every ```ts block of README.md and docs/*.md compiles against the built
 * package, in a temp consumer project under the strict settings users run with:
 * `strict`, `exactOptionalPropertyTypes`, `noUncheckedIndexedAccess`,
 * `skipLibCheck: false`, module `nodenext`. Each block is its own module.
 * Names a block uses for the reader's own app (`db`, `mailer`, ...) are
 * declared in test/readme/app.d.ts (see the convention there); the settings
 * are never weakened and blocks need no casts. And README's first Usage
 * example runs: against a real memcached it prints its outcome and exits.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { startMemcached } from '../helpers/memcached.js';
import { root, sh, tempDir, tscBin, writeFiles } from '../helpers/package.js';

interface Block {
  /** The markdown file, relative to the repository root. */
  readonly file: string;
  /** Line of the file where the block's code starts. */
  readonly line: number;
  readonly code: string;
}

/** The documents whose ```ts blocks must compile: README.md and docs/*.md. */
function documents(): string[] {
  const docs = readdirSync(path.join(root, 'docs'))
    .filter((name) => name.endsWith('.md'))
    .sort()
    .map((name) => `docs/${name}`);
  return ['README.md', ...docs];
}

/** The ```ts blocks of a markdown file, with the line each starts on. */
function tsBlocks(file: string): Block[] {
  const markdown = readFileSync(path.join(root, file), 'utf8');
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i] ?? '')) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end] ?? '')) end++;
    blocks.push({ file, line: start + 1, code: lines.slice(start, end).join('\n') });
    i = end;
  }
  return blocks;
}

const compilerOptions = {
  target: 'ES2022',
  module: 'nodenext',
  moduleResolution: 'nodenext',
  strict: true,
  exactOptionalPropertyTypes: true,
  noUncheckedIndexedAccess: true,
  skipLibCheck: false,
  noEmit: true,
  types: ['node'],
};

/**
 * A temp consumer project: `memlock` resolves to this package (through its
 * exports, to dist/), other packages to the repository's installed ones.
 */
function consumerProject(): { dir: string; remove: () => void } {
  const tmp = tempDir('readme');
  const dir = tmp.dir;
  // node_modules: this package (as `memlock`, resolved through its exports to
  // dist/) and the repository's installed packages (typings, pg, ...).
  mkdirSync(path.join(dir, 'node_modules'));
  symlinkSync(root, path.join(dir, 'node_modules', 'memlock'), 'dir');
  for (const name of readdirSync(path.join(root, 'node_modules'))) {
    if (name.startsWith('.') || name === 'memlock') continue;
    symlinkSync(path.join(root, 'node_modules', name), path.join(dir, 'node_modules', name), 'dir');
  }
  writeFiles(dir, { 'package.json': JSON.stringify({ name: 'readme-consumer', private: true, type: 'module' }) });
  return tmp;
}

test('every ts code block of README.md and docs/*.md compiles against the built package under strict settings', async (t) => {
  const docs = documents();
  const blocks = docs.flatMap(tsBlocks);
  for (const file of docs) t.log(`${file}: ${blocks.filter((b) => b.file === file).length} ts blocks`);
  t.true(blocks.filter((b) => b.file === 'README.md').length >= 5, 'README.md has its blocks');
  t.true(
    ['docs/tasks.md', 'docs/testing.md', 'docs/deploying.md'].every((file) => blocks.some((b) => b.file === file)),
    'the docs pages with code have their blocks',
  );
  const tmp = consumerProject();
  t.teardown(tmp.remove);
  const dir = tmp.dir;
  copyFileSync(path.join(root, 'test', 'readme', 'app.d.ts'), path.join(dir, 'app.d.ts'));
  const files: Record<string, string> = { 'tsconfig.json': JSON.stringify({ compilerOptions, include: ['*.ts'] }) };
  blocks.forEach((block, i) => {
    // `export {}` makes a block without imports a module too (top-level await, own scope).
    files[`block-${i}.ts`] = `${block.code}\nexport {};\n`;
  });
  writeFiles(dir, files);
  const result = await sh(process.execPath, [tscBin, '-p', '.', '--pretty', 'false'], { cwd: dir }).then(
    () => '',
    (error: Error) => error.message,
  );
  // Name the markdown file and line of each failing block.
  const failing = [...result.matchAll(/^block-(\d+)\.ts\((\d+),\d+\): (error .*)$/gm)].map(
    ([, index, line, message]) => {
      const block = blocks[Number(index)];
      return `${block?.file ?? '?'}:${(block?.line ?? 0) + Number(line) - 1}: ${message}`;
    },
  );
  t.deepEqual(failing, [], `failing blocks:\n${failing.join('\n')}`);
  t.is(result, '', result);
});

test('the first example of README "Usage" runs against memcached, prints its outcome and exits 0', async (t) => {
  const readme = tsBlocks('README.md');
  const usage = readFileSync(path.join(root, 'README.md'), 'utf8').split('\n').indexOf('## Usage') + 1;
  const first = readme.find((b) => b.line > usage);
  t.truthy(first, 'a ts block after ## Usage');
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const tmp = consumerProject();
  t.teardown(tmp.remove);
  writeFiles(tmp.dir, { 'usage.ts': first?.code ?? '' });
  const child = spawn(process.execPath, ['--import=tsx', 'usage.ts'], {
    cwd: tmp.dir,
    env: { ...process.env, MEMCACHE_SERVERS: mc.address },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (out += c));
  // An example that forgets close() prints its outcome, then its open connection keeps it alive.
  const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(killer);
  t.is(code, 0, `exit ${String(code)} (null: still running after 15 s); output: ${out}`);
  t.is(out, 'charged\n');
});
