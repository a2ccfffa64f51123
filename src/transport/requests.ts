/**
 * Requests in flight and their deadlines, shared by memlock's own cluster
 * and the memjs-client adapter. Every request gets the same timeout, so
 * deadlines are first-in first-out: one timer for all of them, re-armed for
 * the oldest, and a linked list instead of a heap.
 */
import type { Entry, WriteResult } from '../client.js';
import { MemcacheUnavailableError } from '../errors.js';
import type { Op, Reply } from './codec.js';

export type { Op } from './codec.js';

/** A request waiting for its reply. */
export interface Pending {
  readonly op: Op;
  /** Request id (binary opaque); also unique per client for the meta protocol. */
  readonly seq: number;
  readonly deadline: number;
  readonly resolve: (result: WriteResult | Entry | null) => void;
  readonly reject: (error: unknown) => void;
  /** The connection (or memjs server) the request went to. */
  readonly owner: unknown;
  /** The request's bytes while they wait for the connection to become ready. */
  buf: Buffer | undefined;
  /** Handed to a socket: from then on a failure may leave it applied. */
  sent: boolean;
  /** Settled (answered, failed or expired); a late reply is ignored. */
  done: boolean;
  prev: Pending | undefined;
  next: Pending | undefined;
}

/** The FIFO deadline list of one client. */
export class Deadlines {
  #head: Pending | undefined;
  #tail: Pending | undefined;
  #timer: NodeJS.Timeout | undefined;

  /** `onExpire` gets the requests whose deadline passed, already unlinked and marked done. */
  constructor(
    readonly timeoutMs: number,
    private readonly onExpire: (expired: Pending[]) => void,
  ) {}

  /** A new pending request, linked in with its deadline. */
  create(op: Op, seq: number, owner: unknown, resolve: Pending['resolve'], reject: Pending['reject']): Pending {
    const pending: Pending = {
      op,
      seq,
      deadline: performance.now() + this.timeoutMs,
      resolve,
      reject,
      owner,
      buf: undefined,
      sent: false,
      done: false,
      prev: this.#tail,
      next: undefined,
    };
    if (this.#tail) this.#tail.next = pending;
    else this.#head = pending;
    this.#tail = pending;
    if (this.#timer === undefined) this.#arm();
    else this.#timer.ref();
    return pending;
  }

  /** Unlinks a settled request and marks it done. */
  finish(pending: Pending): void {
    pending.done = true;
    if (pending.prev) pending.prev.next = pending.next;
    else this.#head = pending.next;
    if (pending.next) pending.next.prev = pending.prev;
    else this.#tail = pending.prev;
    pending.prev = pending.next = undefined;
    // Nothing pending: the timer stays armed (re-arming per request costs
    // more) but must not keep the process alive.
    if (this.#head === undefined) this.#timer?.unref();
  }

  /** Unlinks and returns every pending request (on close). */
  drain(): Pending[] {
    const all: Pending[] = [];
    while (this.#head !== undefined) {
      const pending = this.#head;
      this.finish(pending);
      all.push(pending);
    }
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    return all;
  }

  #arm(): void {
    const head = this.#head;
    if (head === undefined) {
      this.#timer = undefined;
      return;
    }
    // Ref'd while requests are pending: they must settle before the process may exit.
    this.#timer = setTimeout(() => this.#expire(), Math.max(1, head.deadline - performance.now()));
  }

  #expire(): void {
    const now = performance.now();
    const expired: Pending[] = [];
    while (this.#head !== undefined && this.#head.deadline <= now) {
      const pending = this.#head;
      this.finish(pending);
      expired.push(pending);
    }
    this.#arm();
    if (expired.length > 0) this.onExpire(expired);
  }
}

const EXISTS: WriteResult = Object.freeze({ status: 'exists' });
const NOT_FOUND: WriteResult = Object.freeze({ status: 'not_found' });

/**
 * Settles a request with its reply, mapped to what the operation returns.
 * `describe` names the server (and protocol) for an error status.
 */
export function settle(
  pending: Pending,
  reply: Reply,
  conn: number,
  describe: () => { server: string; label: string },
): void {
  if (pending.op === 'get') {
    if (reply.status === 'not_found') pending.resolve(null);
    else if (reply.status === 'ok') pending.resolve({ value: reply.value, cas: reply.cas, conn });
    else pending.reject(badStatus(pending.op, reply, describe()));
    return;
  }
  switch (reply.status) {
    case 'ok':
      pending.resolve({ status: 'ok', cas: reply.cas, conn });
      break;
    case 'exists':
      pending.resolve(EXISTS);
      break;
    case 'not_found':
      pending.resolve(NOT_FOUND);
      break;
    default:
      pending.reject(badStatus(pending.op, reply, describe()));
  }
}

/** The server answered with an error: nothing was applied, unless a proxy says it may have been. */
function badStatus(op: Op, reply: Reply, where: { server: string; label: string }): MemcacheUnavailableError {
  const cause = Object.assign(new Error(reply.message || 'server error'), {
    status: reply.code === 0 ? reply.message : reply.code,
  });
  return new MemcacheUnavailableError(`memcache ${op} failed (${where.server}, ${where.label}): ${cause.message}`, {
    cause,
    server: where.server,
    mayHaveApplied: op !== 'get' && reply.mayHaveApplied,
  });
}

/** A transport failure as a `MemcacheUnavailableError` naming server and protocol. */
export function unavailable(
  message: string,
  server: string,
  label: string,
  cause: unknown,
  mayHaveApplied: boolean,
): MemcacheUnavailableError {
  // memjs reports SASL failures as a bare string.
  const error = cause instanceof Error ? cause : new Error(String(cause));
  return new MemcacheUnavailableError(`${message} (${server}, ${label}): ${error.message}`, {
    cause: error,
    server,
    mayHaveApplied,
  });
}

/** The cause of a request that got no reply in time. */
export function timedOut(): Error {
  return Object.assign(new Error('operation timed out'), { code: 'ETIMEDOUT' });
}
