// A RabbitMQ consumer that drops overlapping duplicates: the same message
// (same messageId) can be delivered to several consumers at once (publisher
// retries, redeliveries). Each delivery takes a lock on its messageId; a
// refused one is a duplicate and is acked without work. `holdAfterMs` keeps
// the key blocked for a while after success, so late copies are dropped too.
// Record "done" in your database as well: a lock is not a dedupe record.
// A message without a messageId (amqplib sets none unless the publisher does)
// cannot be deduplicated: it is logged and rejected without requeue, so it
// lands in the dead-letter queue `<queue>.no-message-id`, never acked unread.
//
//   MEMCACHE_SERVERS=localhost:11211 AMQP_URL=amqp://guest:guest@localhost node examples/rabbitmq-consumer.js
import os from 'node:os';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { Memlock, LockNotAcquiredError } from 'memlock';

/** Consumes `queue`, calling `handle(content, signal)` once per messageId. Resolves with `{ close }`. */
export async function startConsumer({ url, queue, memlock, handle, prefetch = 10 }) {
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  const deadLetters = `${queue}.no-message-id`;
  await channel.assertQueue(deadLetters, { durable: false });
  await channel.assertQueue(queue, { durable: false, deadLetterExchange: '', deadLetterRoutingKey: deadLetters });
  await channel.prefetch(prefetch);
  const clientId = () => `${os.hostname()}:${process.pid}:${randomUUID()}`;
  const inFlight = new Set();
  const onMessage = async (message) => {
    const id = message.properties.messageId;
    if (typeof id !== 'string' || id === '') {
      console.error(`rejected a message without messageId from ${queue}: dead-lettered to ${deadLetters}`);
      return channel.nack(message, false, false);
    }
    try {
      await memlock.tryWithLock(`msg:${id}`, clientId(), (signal) => handle(message.content, signal), {
        holdAfterMs: 60_000,
      });
      channel.ack(message);
    } catch (error) {
      if (error instanceof LockNotAcquiredError)
        channel.ack(message); // a duplicate: drop it
      else channel.nack(message, false, true); // failed (or lock lost): let it be redelivered
    }
  };
  const { consumerTag } = await channel.consume(queue, (message) => {
    if (message === null) return; // the queue was deleted
    const done = onMessage(message)
      .catch((error) => console.error(error))
      .finally(() => inFlight.delete(done));
    inFlight.add(done);
  });
  return {
    /** Stops taking messages, lets the ones in hand finish (ack/nack), then closes. */
    async close() {
      await channel.cancel(consumerTag);
      await Promise.all(inFlight);
      await channel.close();
      await connection.close();
    },
  };
}

async function main() {
  const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1';
  const memlock = new Memlock({ servers: process.env.MEMCACHE_SERVERS });
  const consumer = await startConsumer({
    url,
    queue: 'memlock-example',
    memlock,
    handle: async (content, signal) => {
      signal.throwIfAborted();
      console.log(`handled ${content.toString()}`);
    },
  });
  process.once('SIGTERM', () => void consumer.close().then(() => memlock.close()));
  console.log('consuming memlock-example; SIGTERM to stop');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
