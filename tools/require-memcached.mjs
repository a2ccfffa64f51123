// Run first by `npm test` (and the server tiers): the server tests start their
// own memcached processes, so without `memcached` on PATH every one of them
// would fail. Say so in one line instead, and exit 1.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import process from 'node:process';

/** Whether an executable `name` is in one of PATH's directories. */
function onPath(name) {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    if (dir === '') return false;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

if (!onPath('memcached')) {
  process.stderr.write(
    'memcached not found on PATH: apt-get install memcached (or brew install memcached); the server tests start their own. `npm run test:unit` runs the fast tier without it.\n',
  );
  process.exit(1);
}
