/**
 * The published package: `npm pack` (with its `prepack` build) installed into
 * fresh consumer projects in a temp directory. Checks what ships, and that
 * `import` and `require` (Node >= 20.19) both work, from JavaScript and from
 * TypeScript projects (ESM and CommonJS) compiled under strict settings,
 * against a real memcached.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { install, installedVersion, pack, sh, tarballFiles, tempDir, tscBin, writeFiles } from '../helpers/package.js';

let mc: MemcachedProcess | undefined;
const tmp = tempDir('pack');
let tarball = '';
const consumer = path.join(tmp.dir, 'consumer');

test.before(async () => {
  mc = await startMemcached();
  tarball = await pack(tmp.dir);
  writeFiles(consumer, { 'package.json': JSON.stringify({ name: 'consumer', private: true, type: 'module' }) });
  await install(consumer, [tarball, `@types/node@${await installedVersion('@types/node')}`]);
});

test.after.always(async () => {
  await mc?.stop();
  tmp.remove();
});

function env(): NodeJS.ProcessEnv {
  if (mc === undefined) throw new Error('memcached is not started');
  return { ...process.env, MEMCACHE_SERVERS: mc.address, NODE_OPTIONS: '' };
}

/** The consumer programs print this: proof that a lock was taken, refused to another client, and released. */
const expected = { ran: true, refused: true, code: 'ERR_MEMLOCK_NOT_ACQUIRED', holder: 'a', freeAfter: true };

/** Body shared by the JavaScript consumers (ESM and CommonJS). */
const body = (key: string): string => `
  const m = new Memlock({ servers: process.env.MEMCACHE_SERVERS });
  const other = new Memlock({ servers: process.env.MEMCACHE_SERVERS });
  const out = await m.tryWithLock(${JSON.stringify(key)}, 'a', async (signal) => {
    const error = await other.tryWithLock(${JSON.stringify(key)}, 'b', () => 'no').catch((e) => e);
    const info = await m.inspect(${JSON.stringify(key)});
    return { ran: !signal.aborted, refused: error instanceof LockNotAcquiredError && error instanceof MemlockError, code: error.code, holder: info && info.clientId };
  });
  out.freeAfter = (await m.inspect(${JSON.stringify(key)})) === null;
  await Promise.all([m.close(), other.close()]);
  console.log(JSON.stringify(out));
`;

test.serial(
  'the tarball holds the built package, its typings, LICENSE, README and CHANGELOG, and no sources or tests',
  async (t) => {
    const files = await tarballFiles(tarball);
    for (const file of ['package.json', 'README.md', 'LICENSE', 'CHANGELOG.md', 'dist/index.js', 'dist/index.d.ts']) {
      t.true(files.includes(file), `${file} ships`);
    }
    t.deepEqual(
      files.filter((f) => !/^(dist\/.+\.(js|d\.ts|js\.map)|package\.json|README\.md|LICENSE|CHANGELOG\.md)$/.test(f)),
      [],
      'nothing else ships',
    );
    t.false(
      files.some((f) => f.startsWith('src/') || f.startsWith('test/')),
      'no sources or tests',
    );
    // Every source map resolves: it embeds the sources it names (src/ does not ship).
    const installed = path.join(consumer, 'node_modules', 'memlock');
    for (const map of files.filter((f) => f.endsWith('.js.map'))) {
      const json = JSON.parse(readFileSync(path.join(installed, map), 'utf8')) as {
        sources: string[];
        sourcesContent?: Array<string | null>;
      };
      t.is(json.sourcesContent?.length, json.sources.length, `${map} embeds its sources`);
      t.true(
        json.sourcesContent?.every((s) => typeof s === 'string' && s.length > 0),
        `${map} sources are not empty`,
      );
    }
    const pkg = JSON.parse(readFileSync(path.join(installed, 'package.json'), 'utf8')) as Record<string, unknown>;
    t.is(pkg.license, 'MIT');
    t.truthy(pkg.repository);
    t.truthy(pkg.homepage);
    t.truthy(pkg.bugs);
    t.regex(readFileSync(path.join(installed, 'LICENSE'), 'utf8'), /MIT License/);
  },
);

test.serial(
  'only the public surface is reachable: deep imports are blocked, @internal declarations are stripped',
  async (t) => {
    const dist = path.join(consumer, 'node_modules', 'memlock', 'dist');
    t.notRegex(
      readFileSync(path.join(dist, 'index.d.ts'), 'utf8'),
      /HeldLock|LockContext|ResolvedLockOptions|resolveLockOptions|\bpublish\b/,
    );
    t.notRegex(
      readFileSync(path.join(dist, 'diagnostics.d.ts'), 'utf8'),
      /function publish\b/,
      'stripInternal removed publish()',
    );
    t.notRegex(
      readFileSync(path.join(dist, 'errors.d.ts'), 'utf8'),
      /function quoteId\b/,
      'stripInternal removed quoteId()',
    );
    const { stdout } = await sh(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "import('memlock/dist/lock.js').then(() => console.log('reachable'), (e) => console.log(e.code))",
      ],
      { cwd: consumer },
    );
    t.is(stdout.trim(), 'ERR_PACKAGE_PATH_NOT_EXPORTED');
  },
);

test.serial('ESM: import from a plain .mjs consumer', async (t) => {
  writeFiles(consumer, {
    'esm.mjs': `import { Memlock, LockNotAcquiredError, MemlockError } from 'memlock';\n${body('esm')}`,
  });
  const { stdout } = await sh(process.execPath, ['esm.mjs'], { cwd: consumer, env: env() });
  t.deepEqual(JSON.parse(stdout), expected);
});

test.serial('CommonJS: require() from a plain .cjs consumer, the same module instance as import()', async (t) => {
  writeFiles(consumer, {
    'cjs.cjs': `const { Memlock, LockNotAcquiredError, MemlockError } = require('memlock');
(async () => {
  if ((await import('memlock')).Memlock !== Memlock) throw new Error('require() and import() gave different modules');
  ${body('cjs')}
})().catch((error) => { console.error(error); process.exitCode = 1; });
`,
  });
  const { stdout } = await sh(process.execPath, ['cjs.cjs'], { cwd: consumer, env: env() });
  t.deepEqual(JSON.parse(stdout), expected);
});

/** The strict settings users run with; the library's typings must compile under them with `skipLibCheck: false`. */
const strictTsconfig = (module: string): string =>
  JSON.stringify({
    compilerOptions: {
      target: 'ES2022',
      module,
      moduleResolution: module,
      strict: true,
      exactOptionalPropertyTypes: true,
      noUncheckedIndexedAccess: true,
      skipLibCheck: false,
      types: ['node'],
      outDir: 'out',
      rootDir: '.',
    },
    include: ['*.ts'],
  });

/** A TypeScript consumer that uses the typed surface (no casts). */
const tsBody = (key: string): string => `
  const options: MemlockOptions = { servers: process.env.MEMCACHE_SERVERS, prefix: 'ts:' };
  const m = new Memlock(options);
  const other = new Memlock(options);
  const out = await m.tryWithLock(${JSON.stringify(key)}, 'a', async (signal: AbortSignal) => {
    let error: unknown;
    try {
      await other.tryWithLock(${JSON.stringify(key)}, 'b', () => 'no');
    } catch (e) {
      error = e;
    }
    const info: LockInfo | null = await m.inspect(${JSON.stringify(key)});
    const refused = error instanceof LockNotAcquiredError && error instanceof MemlockError;
    const code: string | undefined = error instanceof MemlockError ? error.code : undefined;
    return { ran: !signal.aborted, refused, code, holder: info?.clientId, freeAfter: false };
  });
  out.freeAfter = (await m.inspect(${JSON.stringify(key)})) === null;
  await Promise.all([m.close(), other.close()]);
  console.log(JSON.stringify(out));
`;

test.serial('TypeScript ESM project (module nodenext, strict, skipLibCheck false) compiles and runs', async (t) => {
  const dir = path.join(consumer, 'ts-esm');
  writeFiles(dir, {
    'package.json': JSON.stringify({ type: 'module' }),
    'tsconfig.json': strictTsconfig('nodenext'),
    'main.ts': `import { Memlock, MemlockError, LockNotAcquiredError, type LockInfo, type MemlockOptions } from 'memlock';\n${tsBody('ts-esm')}`,
  });
  await sh(process.execPath, [tscBin, '-p', '.'], { cwd: dir });
  const { stdout } = await sh(process.execPath, ['out/main.js'], { cwd: dir, env: env() });
  t.deepEqual(JSON.parse(stdout), expected);
});

test.serial(
  'TypeScript CommonJS project (module nodenext, strict, skipLibCheck false) compiles to require() and runs',
  async (t) => {
    const dir = path.join(consumer, 'ts-cjs');
    writeFiles(dir, {
      'package.json': JSON.stringify({ type: 'commonjs' }),
      'tsconfig.json': strictTsconfig('nodenext'),
      'main.ts': `import { Memlock, MemlockError, LockNotAcquiredError, type LockInfo, type MemlockOptions } from 'memlock';
async function main(): Promise<void> {
  ${tsBody('ts-cjs')}
}
main().catch((error: unknown) => { console.error(error); process.exitCode = 1; });
`,
    });
    await sh(process.execPath, [tscBin, '-p', '.'], { cwd: dir });
    const emitted = readFileSync(path.join(dir, 'out', 'main.js'), 'utf8');
    t.regex(emitted, /require\("memlock"\)/, 'compiled to CommonJS');
    const { stdout } = await sh(process.execPath, ['out/main.js'], { cwd: dir, env: env() });
    t.deepEqual(JSON.parse(stdout), expected);
  },
);

test.serial('the installed `memlock` command runs through npx (bin, shebang, executable)', async (t) => {
  const help = await sh('npx', ['--no-install', 'memlock', '--help'], { cwd: consumer, env: env() });
  t.regex(help.stdout, /Usage: memlock <command>/);
  const writer = `import { Memlock } from 'memlock';
const m = new Memlock();
const lock = await m.acquire('npx-key', 'npx-holder');
const { execFile } = await import('node:child_process');
const { promisify } = await import('node:util');
// What npx runs: the bin link npm created (shebang + executable bit).
const npx = (...args) => promisify(execFile)('node_modules/.bin/memlock', args, { encoding: 'utf8' }).then((r) => r.stdout);
const out = await npx('inspect', 'npx-key', '--json');
const released = await npx('release', 'npx-key', '--force');
await new Promise((resolve) => lock.signal.addEventListener('abort', resolve, { once: true }));
await lock.release();
await m.close();
console.log(JSON.stringify({ info: JSON.parse(out), released, reason: lock.signal.reason.kind }));
`;
  writeFiles(consumer, { 'bin.mjs': writer });
  const { stdout } = await sh(process.execPath, ['bin.mjs'], { cwd: consumer, env: env() });
  const result = JSON.parse(stdout) as { info: { clientId: string; state: string }; released: string; reason: string };
  t.like(result.info, { clientId: 'npx-holder', state: 'held' });
  t.regex(result.released, /removed the entry memlock:npx-key \(held, holder "npx-holder"/);
  t.is(result.reason, 'gone');
});
