/**
 * The small parts of `pg` and `amqplib` this module touches, as structural
 * types. Importing the packages' own types would make every consumer of
 * `memlock/tasks` install them (or break their type check); `pg.Pool`,
 * `pg.PoolClient`, amqplib's `Channel`, `ConfirmChannel` and `ConsumeMessage`
 * all satisfy these shapes.
 */

/** Result of a query: what `pg` resolves with (only the fields used here). */
export interface QueryResultLike<R> {
  readonly rows: R[];
  readonly rowCount: number | null;
}

/** Anything that runs a parameterised query: `pg.Pool`, `pg.Client`, `pg.PoolClient`. */
export interface Queryable {
  query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<QueryResultLike<R>>;
}

/** A checked-out connection (`pg.PoolClient`): a transaction lives on one of these. */
export interface PoolClientLike extends Queryable {
  /** Returns the connection to the pool; pass an error to have the pool discard it. */
  release(err?: Error | boolean): void;
}

/** A connection pool (`pg.Pool`). */
export interface PoolLike extends Queryable {
  connect(): Promise<PoolClientLike>;
}

/** A delivered message (amqplib `ConsumeMessage`). */
export interface MessageLike {
  readonly content: Buffer;
  readonly fields: { readonly deliveryTag: number; readonly redelivered?: boolean };
}

/** A consuming channel (amqplib `Channel`). */
export interface ChannelLike {
  // Method syntax on purpose: parameters of methods are compared bivariantly,
  // so amqplib's `ack(message: Message)` fits `ack(message: MessageLike)`.
  ack(message: MessageLike): void;
  nack(message: MessageLike, allUpTo?: boolean, requeue?: boolean): void;
  prefetch(count: number, global?: boolean): Promise<unknown>;
  consume(
    queue: string,
    onMessage: (message: MessageLike | null) => void,
    options?: { noAck?: boolean },
  ): Promise<{ consumerTag: string }>;
  cancel(consumerTag: string): Promise<unknown>;
}

/** A publisher-confirms channel (amqplib `ConfirmChannel` from `createConfirmChannel()`). */
export interface ConfirmChannelLike {
  publish(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options?: { persistent?: boolean; messageId?: string; contentType?: string },
  ): boolean;
  waitForConfirms(): Promise<void>;
}
