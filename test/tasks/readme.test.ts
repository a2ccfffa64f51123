/**
 * The README's "Exactly-once tasks" code block is examples/tasks/readme.ts
 * (type-checked with the project), with the package's import paths.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url);

test('the README code block of "Exactly-once tasks" is the type-checked examples/tasks/readme.ts', (t) => {
  const readme = readFileSync(new URL('README.md', root), 'utf8');
  const section = readme.slice(readme.indexOf('## Exactly-once tasks'), readme.indexOf('## Benchmarks'));
  t.true(section.length > 0, 'the section exists before ## Benchmarks');
  const block = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  t.truthy(block, 'the section has a ts code block');
  const example = readFileSync(new URL('examples/tasks/readme.ts', root), 'utf8');
  const body = example
    .slice(example.indexOf('// README-BEGIN\n') + '// README-BEGIN\n'.length, example.indexOf('// README-END'))
    .replace("'../../src/tasks/index.js'", "'memlock/tasks'")
    .replace("'../../src/index.js'", "'memlock'");
  t.is(block, body);
});
