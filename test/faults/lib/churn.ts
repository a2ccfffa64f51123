/**
 * A memory-pressure writer for eviction tests: one raw text-protocol
 * connection that pipelines `set ... noreply` of fresh keys as fast as the
 * socket drains. Keys and values have the same lengths as the lock entries
 * under test, so they land in the same slab class and push them out of the
 * LRU (memcached evicts per slab class).
 */
import net from 'node:net';

export interface Churn {
  /** Keys written so far. */
  readonly written: number;
  stop(): Promise<void>;
}

/**
 * Starts writing. `perSecond` caps the rate (batches of 500 on a timer);
 * without it the writer goes as fast as the socket drains.
 */
export async function startChurn(
  target: { host: string; port: number },
  keyLength: number,
  valueLength: number,
  perSecond = Infinity,
  prefix = 'churn',
): Promise<Churn> {
  const socket = net.connect({ host: target.host, port: target.port });
  socket.on('error', () => undefined);
  socket.on('data', () => undefined); // noreply: only errors would come back
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  const value = 'x'.repeat(valueLength);
  let written = 0;
  let stopped = false;
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const pump = (): void => {
    timer = undefined;
    while (!stopped) {
      const behind = Number.isFinite(perSecond)
        ? ((performance.now() - started) / 1000) * perSecond - written
        : Infinity;
      if (behind < 500) {
        timer = setTimeout(pump, Math.max(1, ((500 - behind) / perSecond) * 1000));
        return;
      }
      let batch = '';
      for (let i = 0; i < 500; i++) {
        const key = `${prefix}${(written++).toString(36)}`
          .padEnd(keyLength, '_')
          .slice(0, Math.max(keyLength, prefix.length + 8));
        batch += `set ${key} 0 0 ${valueLength} noreply\r\n${value}\r\n`;
      }
      if (!socket.write(batch)) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  // Start on the next turn so the caller's timers keep running between batches.
  setImmediate(pump);
  return {
    get written() {
      return written;
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await new Promise<void>((resolve) => {
        socket.once('close', () => resolve());
        socket.end();
      });
    },
  };
}
