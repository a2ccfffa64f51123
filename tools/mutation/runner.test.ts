/**
 * Self-tests of the mutation runner (tools/mutation/run.mjs with its
 * in-process stand-in for ava, tools/mutation/ava-shim.mjs). Its exit code is
 * StrykerJS's verdict: a runner that passes a failing test file would count
 * killed mutants as survivors, one that fails a passing file would count
 * survivors as killed. So each planted file below must get the verdict real
 * ava gives it, through the same command Stryker runs.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '../..');
const RUN = join(ROOT, 'tools/mutation/run.mjs');

/** A scratch project laid out as a Stryker sandbox after build.mjs (inside the checkout, so `concordance` resolves). */
function sandbox(files: Record<string, string>): string {
  mkdirSync(join(ROOT, '.tmp'), { recursive: true });
  const dir = mkdtempSync(join(ROOT, '.tmp', 'mutation-runner-'));
  const ava = join(dir, '.mutation-build/node_modules/ava');
  mkdirSync(ava, { recursive: true });
  writeFileSync(join(ava, 'package.json'), JSON.stringify({ name: 'ava', type: 'module', exports: './index.mjs' }));
  copyFileSync(join(ROOT, 'tools/mutation/ava-shim.mjs'), join(ava, 'index.mjs'));
  mkdirSync(join(dir, '.mutation-build/test/unit'), { recursive: true });
  mkdirSync(join(dir, 'src'), { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

interface Verdict {
  status: number | null;
  stderr: string;
}

function run(dir: string, args: string[], env: Record<string, string> = {}): Verdict {
  const result = spawnSync(process.execPath, [RUN, ...args], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60_000,
  });
  return { status: result.status, stderr: result.stderr };
}

/** One fixture file `<name>.test.js` holding `body` after `import test from 'ava'`. */
function verdict(t: { teardown: (fn: () => void) => void }, body: string, env?: Record<string, string>): Verdict {
  const dir = sandbox({ '.mutation-build/test/unit/fixture.test.js': `import test from 'ava';\n${body}\n` });
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return run(dir, ['fixture'], env);
}

const passes: Array<[string, string]> = [
  [
    'the assertions the fast tier uses, all holding (positive control)',
    `
test('all hold', async (t) => {
  t.is(1, 1); t.not(1, 2); t.true(true); t.false(false); t.truthy(1); t.falsy(0);
  t.deepEqual({ a: [1, { b: 2 }] }, { a: [1, { b: 2 }] });
  t.like({ a: 1, b: { c: 2, d: 3 } }, { b: { c: 2 } });
  t.regex('abc', /b/);
  const error = t.throws(() => { const e = new RangeError('bad x'); e.code = 'E_X'; throw e; }, { instanceOf: RangeError, code: 'E_X', message: /x$/ });
  t.is(error.code, 'E_X');
  await t.throwsAsync(async () => { throw new TypeError('no'); }, { name: 'TypeError', message: 'no' });
  t.notThrows(() => 1);
});`,
  ],
  [
    'a rejection handled before the file ends',
    `
test('late handler', async (t) => {
  const p = Promise.reject(new Error('later'));
  await new Promise((r) => setTimeout(r, 10));
  p.catch(() => {});
  t.pass();
});`,
  ],
  [
    'ava’s looser expectations: any with a non-Error, is, a message function returning undefined',
    `
test('loose', (t) => {
  t.throws(() => { throw 'text'; }, { any: true });
  const e = new Error('m');
  t.throws(() => { throw e; }, { is: e, message: () => undefined });
  t.notDeepEqual({ a: 1 }, { a: 2 });
  t.notRegex('abc', /x/);
  return t.notThrowsAsync(Promise.resolve(1));
});`,
  ],
  [
    'serial tests first, then the others (as ava orders them)',
    `
const order = [];
test('concurrent one', (t) => { order.push('c'); t.deepEqual(order, ['s1', 's2', 'c']); });
test.serial('serial one', (t) => { order.push('s1'); t.pass(); });
test.serial('serial two', (t) => { order.push('s2'); t.pass(); });`,
  ],
  [
    'teardowns run in reverse order, after the test',
    `
const order = [];
test.serial('registers', (t) => { t.teardown(() => order.push(1)); t.teardown(() => order.push(2)); order.push(0); t.pass(); });
test.serial('sees the order', (t) => { t.deepEqual(order, [0, 2, 1]); });`,
  ],
];

for (const [title, body] of passes) {
  test(`runner passes: ${title}`, (t) => {
    const { status, stderr } = verdict(t, body);
    t.is(status, 0, stderr);
  });
}

const failures: Array<[string, string, RegExp]> = [
  [
    'a deepEqual that does not hold',
    `test('d', (t) => { t.deepEqual({ a: [1, 2] }, { a: [1, 3] }); });`,
    /d: AssertionError/,
  ],
  [
    'a failed assertion the test catches',
    `test('c', (t) => { try { t.is(1, 2); } catch {} t.pass(); });`,
    /c: AssertionError: assertion failed: 1 is not 2/,
  ],
  ['a test without assertions', `test('none', () => {});`, /without running any assertions/],
  [
    't.throws with the wrong code',
    `test('code', (t) => { t.throws(() => { const e = new Error('m'); e.code = 'Y'; throw e; }, { code: 'X' }); });`,
    /threw code Y, expected X/,
  ],
  ['t.throws where nothing is thrown', `test('quiet', (t) => { t.throws(() => 1); });`, /did not throw/],
  [
    't.throws of something that is not an Error',
    `test('str', (t) => { t.throws(() => { throw 'text'; }); });`,
    /not an Error/,
  ],
  [
    'a throwsAsync the test never awaits, on a promise that resolves',
    `test('unawaited', (t) => { t.throwsAsync(Promise.resolve(1)); });`,
    /resolved instead of rejecting/,
  ],
  [
    't.like on a differing selected key',
    `test('like', (t) => { t.like({ a: { b: 1, c: 2 } }, { a: { b: 2 } }); });`,
    /like: AssertionError/,
  ],
  ['t.regex on a non-string', `test('re', (t) => { t.regex(1, /1/); });`, /re: AssertionError/],
  [
    'a teardown that throws',
    `test('td', (t) => { t.pass(); t.teardown(() => { throw new Error('teardown broke'); }); });`,
    /teardown broke/,
  ],
  [
    'a test that can never settle (nothing left in the event loop)',
    `test('hang', async (t) => { t.pass(); await new Promise(() => {}); });`,
    /pending and nothing left to run/,
  ],
  [
    'a rejection still unhandled when the file ends',
    `test('unh', (t) => { t.pass(); Promise.reject(new Error('dropped')); });`,
    /unhandled rejection: Error: dropped/,
  ],
  [
    'an uncaught exception from a timer',
    `test.serial('a', async (t) => { setTimeout(() => { throw new Error('boom'); }, 1); await new Promise((r) => setTimeout(r, 20)); t.pass(); });`,
    /boom/,
  ],
  [
    'a failure after an earlier passing test',
    `test.serial('first', (t) => t.pass()); test.serial('second', (t) => t.fail('planted'));`,
    /second: AssertionError: planted/,
  ],
  [
    'a test that ends while its throwsAsync is still pending',
    `test('pending', (t) => { t.throwsAsync(new Promise(() => {})); });`,
    /assertion is still pending/,
  ],
  [
    'an uncaught exception in an after.always hook',
    `test('ok', (t) => t.pass()); test.after.always(() => { setImmediate(() => { throw new Error('late boom'); }); });`,
    /uncaught exception: Error: late boom/,
  ],
  [
    'an expectation object ava refuses, even when the test catches it',
    `test('bad', (t) => { try { t.throws(() => { throw new Error('x'); }, { wrong: 1 }); } catch {} t.pass(); });`,
    /unexpected property wrong/,
  ],
  [
    'an unsupported ava API (never a silent pass)',
    `test.skip('s', (t) => t.pass());`,
    /not supported by the mutation shim/,
  ],
];

for (const [title, body, message] of failures) {
  test(`runner fails: ${title}`, (t) => {
    const { status, stderr } = verdict(t, body);
    t.is(status, 1);
    t.regex(stderr, message);
  });
}

test('runner fails a file stuck in synchronous code once the per-file deadline passes', (t) => {
  const { status, stderr } = verdict(t, `test('spin', (t) => { t.pass(); for (;;); });`, {
    MEMLOCK_MUTATION_FILE_DEADLINE_MS: '500',
  });
  t.is(status, 1);
  t.regex(stderr, /no progress for 500 ms/);
});

test('runner: the per-file deadline counts from the last test started, so a slow file that keeps passing is no hang', (t) => {
  const tests = Array.from(
    { length: 4 },
    (_, i) => `test.serial('slow ${i}', async (t) => { await new Promise((r) => setTimeout(r, 300)); t.pass(); });`,
  );
  const { status, stderr } = verdict(t, tests.join('\n'), { MEMLOCK_MUTATION_FILE_DEADLINE_MS: '500' });
  t.is(status, 0, stderr);
});

test('runner picks the test files of the mutated source, and all files without a mutant', (t) => {
  const dir = sandbox({
    'src/keys.ts': 'export const k = stryMutAct_9fa48("7") ? 1 : 2;\n',
    'src/options.ts': 'export const o = stryMutAct_9fa48("8") ? 1 : 2;\n',
    // keys.ts maps to small-modules only; options.ts also to memlock (second stage).
    '.mutation-build/test/unit/small-modules.test.js': `import test from 'ava';\ntest('sm', (t) => t.pass());\n`,
    '.mutation-build/test/unit/memlock.test.js': `import test from 'ava';\ntest('ml', (t) => t.fail('memlock stage ran'));\n`,
    // In no stage of keys.ts or options.ts: only the dry run meets it.
    '.mutation-build/test/unit/codecs.test.js': `import test from 'ava';\ntest('cd', (t) => t.fail('codecs ran'));\n`,
  });
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.is(run(dir, [], { __STRYKER_ACTIVE_MUTANT__: '7' }).status, 0, 'a keys.ts mutant runs small-modules only');
  const options = run(dir, [], { __STRYKER_ACTIVE_MUTANT__: '8' });
  t.is(options.status, 1, 'an options.ts mutant that survives small-modules meets the memlock stage');
  t.regex(options.stderr, /memlock stage ran/);
  t.notRegex(options.stderr, /codecs ran/);
  const dry = run(dir, [], { __STRYKER_ACTIVE_MUTANT__: '' });
  t.is(dry.status, 1, 'the dry run runs every file');
  t.regex(dry.stderr, /codecs ran|memlock stage ran/);
});
