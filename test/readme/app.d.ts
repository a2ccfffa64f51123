/**
 * The reader's application in README examples. The code blocks of README.md
 * and docs/*.md are type-checked by test/integration/readme.test.ts against the built package; names they
 * use without declaring (`db`, `mailer`, `log`, ...) stand for the reader's
 * own code and are declared here, once, with plausible types. Add a
 * placeholder here rather than weakening the compiler settings or casting in
 * the README. `memlock` (an instance) is declared for blocks that continue an
 * earlier one.
 */
import type { IncomingMessage } from 'node:http';
import type { Memlock } from 'memlock';

declare global {
  /** An instance created in an earlier block. */
  const memlock: Memlock;
  /** A database client whose transactions take a signal. */
  const db: {
    transaction<T>(
      work: (tx: { query(sql: string, params?: unknown[]): Promise<unknown> }) => Promise<T>,
      options?: { signal?: AbortSignal },
    ): Promise<T>;
  };
  /** Sends email; honours a signal. */
  const mailer: {
    send(message: { to: string; subject: string; text: string }, options?: { signal?: AbortSignal }): Promise<void>;
  };
  /** Builds the receipt email of an order. */
  function receiptFor(orderId: string): { to: string; subject: string; text: string };
  /** A long job that honours a signal. */
  function buildReport(name: string, signal: AbortSignal): Promise<{ name: string; rows: number }>;
  /** Charges an invoice in a database transaction that honours the signal. */
  function chargeInvoice(invoiceId: number, signal: AbortSignal): Promise<void>;
  /** Sends a job's email; honours a signal. */
  function sendEmail(jobId: string, signal: AbortSignal): Promise<void>;
  /** An AbortSignal that aborts when the client of `request` hangs up. */
  function abortOnClose(request: IncomingMessage): AbortSignal;
  /** A queue job's id and this delivery's id (unique per delivery). */
  const jobId: string;
  const deliveryId: string;
  /** This caller's clientId, built in an earlier block. */
  const clientId: string;
  /** Work done while holding a lock. */
  function doWork(signal: AbortSignal): Promise<void>;
  /** A structured logger (pino-style). */
  const log: {
    info(fields: object, message?: string): void;
    warn(fields: object, message?: string): void;
    error(fields: object, message?: string): void;
  };
}
