/**
 * The part of ava's test API the fast tier uses, run in-process: mutation
 * runs only (tools/mutation/build.mjs installs this file as `ava` inside
 * `.mutation-build/`, so the compiled tests import it; `npm test` and
 * `npm run test:unit` use the real ava).
 *
 * Why: starting ava's CLI (config, globbing, reporters, worker set-up) costs
 * about 0.85 s of CPU, more than most fast-tier files cost to run, and a
 * mutation run starts it thousands of times. tools/mutation/run.mjs runs each
 * file in a worker thread of its own, as ava's `workerThreads` mode does.
 *
 * Semantics follow ava 7 wherever a verdict could differ, because a shim
 * that is stricter than ava would kill mutants the real suite lets live:
 * - deepEqual and like compare with concordance, ava's own comparer, and
 *   like selects what it compares the way ava's like-selector does;
 * - throws/throwsAsync check an expectation object (is, instanceOf, name,
 *   message as string/RegExp/function, code, any) as ava's assertExpectations
 *   does, and refuse a non-Error unless `any`;
 * - a failed assertion throws and marks the test failed (even if caught);
 *   a test with no assertion fails, and so does one whose promise settles
 *   while a throwsAsync is still pending; teardowns run in reverse order and
 *   may fail the test; serial tests run first, then the others;
 * - an uncaught exception fails the file (tools/mutation/run.mjs), and so
 *   does a rejection still unhandled once the file's tests have run.
 * - a test that can never settle fails when its worker's event loop drains
 *   (run.mjs), one that is merely slow after TEST_TIMEOUT_MS.
 * Differences: non-serial tests run one after another (ava starts them
 * together; a test that passes alone but fails beside others would differ),
 * the timeout is per test (10 s, ava's 5 s was for the whole file's
 * inactivity), hooks beyond before/after(.always)/afterEach(.always) and
 * t.plan/t.timeout throw "not supported" (a loud failure, never a silent
 * pass), and a failFast stop skips the remaining afterEach hooks.
 */
import concordance from 'concordance';
import { isNativeError } from 'node:util/types';

// Captured before any test installs fake timers (the tests fake setTimeout).
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

/**
 * A test still pending after this long fails. Generous: the fast tier's
 * tests take well under a second alone, but a mutation run shares two cores
 * among four runs, and a slow test must not count as a kill. The timer is
 * unref'd: a test whose promise can never settle (nothing left in the event
 * loop) ends its worker at once, which run.mjs counts as a failure, as ava
 * does ("Promise returned by test never resolved").
 */
export const TEST_TIMEOUT_MS = 10_000;

const registry = { before: [], after: [], afterEach: [], tests: [] };

class AssertionError extends Error {
  constructor(message) {
    super(message);
    this.name = 'AssertionError';
  }
}

const isPrimitive = (value) => value === null || typeof value !== 'object';

/** ava's like-selector: arrays and plain objects with an enumerable key. */
function isLikeSelector(selector) {
  if (isPrimitive(selector)) return false;
  if (!Array.isArray(selector) && Reflect.getPrototypeOf(selector) !== Object.prototype) return false;
  const descriptors = Object.getOwnPropertyDescriptors(selector);
  return Reflect.ownKeys(descriptors).some((key) => descriptors[key].enumerable === true);
}

function selectComparable(actual, selector) {
  if (isPrimitive(actual)) return actual;
  const comparable = Array.isArray(selector) ? [] : {};
  for (const key of Reflect.ownKeys(selector)) {
    if (!Reflect.getOwnPropertyDescriptor(selector, key).enumerable) continue;
    const sub = Reflect.get(selector, key);
    comparable[key] = isLikeSelector(sub) ? selectComparable(Reflect.get(actual, key), sub) : Reflect.get(actual, key);
  }
  return comparable;
}

const EXPECTATION_KEYS = new Set(['instanceOf', 'is', 'message', 'name', 'code', 'any']);

function checkExpectations(expectations, assertion) {
  if (expectations === undefined) return {};
  if (
    typeof expectations !== 'object' ||
    Array.isArray(expectations) ||
    expectations instanceof RegExp ||
    Object.keys(expectations).length === 0
  ) {
    throw new AssertionError(`The second argument to ${assertion} must be an expectation object`);
  }
  for (const key of Object.keys(expectations)) {
    if (!EXPECTATION_KEYS.has(key))
      throw new AssertionError(`The second argument to ${assertion} contains unexpected property ${key}`);
  }
  return expectations;
}

function describeMismatch(actual, expectations) {
  if (!isNativeError(actual) && expectations.any !== true) return 'threw something that is not an Error';
  if (Object.hasOwn(expectations, 'is') && actual !== expectations.is) return 'threw a different value than `is`';
  if (expectations.instanceOf && !(actual instanceof expectations.instanceOf))
    return `threw, not an instance of ${expectations.instanceOf.name}`;
  if (typeof expectations.name === 'string' && actual.name !== expectations.name)
    return `threw name ${String(actual.name)}, expected ${expectations.name}`;
  const { message } = expectations;
  if (typeof message === 'string' && actual.message !== message)
    return `threw message ${JSON.stringify(actual.message)}, expected ${JSON.stringify(message)}`;
  if (message instanceof RegExp && !message.test(actual.message))
    return `threw message ${JSON.stringify(actual.message)}, expected to match ${message}`;
  if (typeof message === 'function' && message(actual.message) === false)
    return `threw message ${JSON.stringify(actual.message)}, refused by the message function`;
  if (expectations.code !== undefined && actual.code !== expectations.code)
    return `threw code ${String(actual.code)}, expected ${String(expectations.code)}`;
  return undefined;
}

const isThenable = (value) =>
  value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function';

/** One test's `t`: assertions throw on failure and also mark the test failed. */
class Execution {
  constructor(title) {
    this.title = title;
    this.assertions = 0;
    this.failure = undefined;
    this.pending = [];
    this.teardowns = [];
  }

  #fail(message, detail) {
    const error = new AssertionError(detail === undefined ? message : `${message}: ${detail}`);
    this.failure ??= error;
    return error;
  }

  /** A bad expectation object fails the test (as in ava), even if the test catches the throw. */
  #expectations(expectations, assertion) {
    try {
      return checkExpectations(expectations, assertion);
    } catch (error) {
      throw this.#fail(error.message);
    }
  }

  /** `detail` is a function: formatting values costs more than comparing them. */
  #check(ok, message, detail) {
    this.assertions += 1;
    if (!ok) throw this.#fail(message ?? 'assertion failed', detail?.());
  }

  pass() {
    this.assertions += 1;
  }
  fail(message) {
    this.#check(false, message ?? 'Test failed via `t.fail()`');
  }
  is(actual, expected, message) {
    this.#check(
      Object.is(actual, expected),
      message,
      () => `${concordance.format(actual)} is not ${concordance.format(expected)}`,
    );
  }
  not(actual, expected, message) {
    this.#check(!Object.is(actual, expected), message, () => `both are ${concordance.format(actual)}`);
  }
  true(value, message) {
    this.#check(value === true, message, () => `${concordance.format(value)} is not true`);
  }
  false(value, message) {
    this.#check(value === false, message, () => `${concordance.format(value)} is not false`);
  }
  truthy(value, message) {
    this.#check(Boolean(value), message, () => `${concordance.format(value)} is not truthy`);
  }
  falsy(value, message) {
    this.#check(!value, message, () => `${concordance.format(value)} is not falsy`);
  }
  assert(value, message) {
    this.truthy(value, message);
  }

  deepEqual(actual, expected, message) {
    const result = concordance.compare(actual, expected);
    this.#check(result.pass, message, () => concordance.diff(actual, expected));
  }

  notDeepEqual(actual, expected, message) {
    this.#check(!concordance.compare(actual, expected).pass, message, () => 'values are deeply equal');
  }

  like(actual, selector, message) {
    if (!isLikeSelector(selector)) throw this.#fail('`t.like()` selector must be a non-empty object');
    const comparable = selectComparable(actual, selector);
    const result = concordance.compare(comparable, selector);
    this.#check(result.pass, message, () => concordance.diff(comparable, selector));
  }

  regex(string, regex, message) {
    this.#check(
      typeof string === 'string' && regex.test(string),
      message,
      () => `${concordance.format(string)} does not match ${regex}`,
    );
  }

  notRegex(string, regex, message) {
    this.#check(
      typeof string === 'string' && !regex.test(string),
      message,
      () => `${concordance.format(string)} matches ${regex}`,
    );
  }

  throws(fn, expectations, message) {
    this.assertions += 1;
    const expect = this.#expectations(expectations, '`t.throws()`');
    if (typeof fn !== 'function') throw this.#fail('`t.throws()` must be called with a function');
    let returned;
    try {
      returned = fn();
    } catch (error) {
      const mismatch = describeMismatch(error, expect);
      if (mismatch !== undefined) throw this.#fail(message ?? 'Function threw unexpectedly', mismatch);
      return error;
    }
    if (isThenable(returned)) Promise.resolve(returned).catch(() => {});
    throw this.#fail(
      message ?? 'Function did not throw',
      isThenable(returned) ? 'it returned a promise; use t.throwsAsync()' : undefined,
    );
  }

  throwsAsync(thrower, expectations, message) {
    this.assertions += 1;
    const expect = this.#expectations(expectations, '`t.throwsAsync()`');
    let promise = thrower;
    if (typeof thrower === 'function') {
      try {
        promise = thrower();
      } catch (error) {
        return Promise.reject(this.#fail(message ?? 'Function threw synchronously; use t.throws()', String(error)));
      }
    }
    if (!isThenable(promise))
      return Promise.reject(this.#fail(message ?? '`t.throwsAsync()` needs a promise or a function returning one'));
    const settled = Promise.resolve(promise).then(
      () => {
        throw this.#fail(message ?? 'Promise resolved instead of rejecting');
      },
      (error) => {
        const mismatch = describeMismatch(error, expect);
        if (mismatch !== undefined) throw this.#fail(message ?? 'Promise rejected unexpectedly', mismatch);
        return error;
      },
    );
    const pending = settled.then(
      () => {
        pending.settled = true;
      },
      () => {
        pending.settled = true;
      },
    );
    pending.settled = false;
    this.pending.push(pending);
    return settled;
  }

  notThrows(fn, message) {
    this.assertions += 1;
    try {
      fn();
    } catch (error) {
      throw this.#fail(message ?? 'Function threw', String(error));
    }
  }

  async notThrowsAsync(thrower, message) {
    this.assertions += 1;
    try {
      await (typeof thrower === 'function' ? thrower() : thrower);
    } catch (error) {
      throw this.#fail(message ?? 'Promise rejected', String(error));
    }
  }

  teardown(fn) {
    this.teardowns.push(fn);
  }
  log() {}
  plan() {
    throw this.#fail('t.plan() is not supported by the mutation shim');
  }
  timeout() {
    throw this.#fail('t.timeout() is not supported by the mutation shim');
  }
}

function register(list, options) {
  return (title, fn) => {
    if (typeof title === 'function') [title, fn] = ['(hook)', title];
    list.push({ title, fn, ...options });
  };
}

/** `import test from 'ava'` inside .mutation-build/: registers, runs nothing. */
const test = register(registry.tests, { serial: false });
test.serial = register(registry.tests, { serial: true });
test.before = register(registry.before);
test.after = register(registry.after);
test.after.always = register(registry.after);
test.afterEach = register(registry.afterEach);
test.afterEach.always = register(registry.afterEach);
for (const name of ['only', 'skip', 'todo', 'failing', 'macro', 'beforeEach']) {
  test[name] = () => {
    throw new Error(`test.${name} is not supported by the mutation shim (tools/mutation/ava-shim.mjs)`);
  };
}
export default test;

/** Runs one test or hook body with the timeout; returns its failure or undefined. */
async function runOne(title, fn, { isHook = false } = {}) {
  const t = new Execution(title);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = realSetTimeout(() => reject(new AssertionError(`timed out after ${TEST_TIMEOUT_MS} ms`)), TEST_TIMEOUT_MS);
    timer.unref();
  });
  try {
    await Promise.race([fn(t), timeout]);
    // As ava: an assertion still pending when the test's promise settles fails it.
    if (t.pending.some((p) => !p.settled)) throw new AssertionError('Test finished, but an assertion is still pending');
    await Promise.all(t.pending);
    if (!isHook && t.failure === undefined && t.assertions === 0)
      t.failure = new AssertionError('Test finished without running any assertions');
  } catch (error) {
    t.failure ??= error;
  }
  for (const teardown of t.teardowns.reverse()) {
    try {
      await teardown();
    } catch (error) {
      t.failure ??= error;
    }
  }
  realClearTimeout(timer);
  return t.failure;
}

/**
 * Runs what the imported test file registered, stopping at the first
 * failure (ava's failFast). Resolves to undefined or `{ title, error }`.
 */
export async function runRegistered(uncaught, onProgress = () => {}) {
  const check = (error) => error ?? uncaught[0];
  for (const hook of registry.before) {
    const error = check(await runOne(hook.title, hook.fn, { isHook: true }));
    if (error !== undefined) return { title: `before: ${hook.title}`, error };
  }
  let failed;
  // ava runs the serial tests first, then the others (all at once; here one by one).
  const ordered = [
    ...registry.tests.filter((entry) => entry.serial),
    ...registry.tests.filter((entry) => !entry.serial),
  ];
  for (const { title, fn } of ordered) {
    onProgress(title);
    let error = await runOne(title, fn);
    for (const hook of registry.afterEach) error ??= await runOne(`afterEach for ${title}`, hook.fn, { isHook: true });
    error = check(error);
    if (error !== undefined) {
      failed = { title, error };
      break;
    }
  }
  for (const hook of registry.after) {
    const error = await runOne(hook.title, hook.fn, { isHook: true });
    failed ??= error === undefined ? undefined : { title: `after: ${hook.title}`, error };
  }
  return failed;
}
