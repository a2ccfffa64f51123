/**
 * The reader's application in README examples. README code blocks are
 * type-checked by test/readme.test.ts against the built package; names they
 * use without declaring (`db`, `mailer`, `log`, ...) stand for the reader's
 * own code and are declared here, once, with plausible types. Add a
 * placeholder here rather than weakening the compiler settings or casting in
 * the README. `memlock` (an instance) is declared for blocks that continue an
 * earlier one.
 */
import type { Memlock } from 'memlock';

declare global {
  /** An instance created in an earlier block. */
  const memlock: Memlock;
  /** A database client whose transactions take a signal. */
  const db: {
    transaction<T>(work: (tx: { query(sql: string, params?: unknown[]): Promise<unknown> }) => Promise<T>, options?: { signal?: AbortSignal }): Promise<T>;
  };
  /** Sends email; honours a signal. */
  const mailer: { send(message: { to: string; subject: string; text: string }, options?: { signal?: AbortSignal }): Promise<void> };
  /** Builds the receipt email of an order. */
  function receiptFor(orderId: string): { to: string; subject: string; text: string };
  /** A long job that honours a signal. */
  function buildReport(signal: AbortSignal): Promise<void>;
  /** Work done while holding a lock. */
  function doWork(signal: AbortSignal): Promise<void>;
  /** A structured logger (pino-style). */
  const log: {
    info(fields: object, message?: string): void;
    warn(fields: object, message?: string): void;
    error(fields: object, message?: string): void;
  };
}
