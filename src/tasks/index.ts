/**
 * `memlock/tasks`: exactly-once tasks on PostgreSQL (sequence-numbered row
 * leases) and RabbitMQ (transactional outbox), with memlock as the cheap
 * pre-filter for concurrent duplicate deliveries. `pg` and `amqplib` are
 * optional peer dependencies: only their shapes are used (see ports.ts).
 */
export { Tasks } from './tasks.js';
export type { TasksOptions, ConsumeOptions, Consumer } from './tasks.js';
export { Relay } from './relay.js';
export type { RelayOptions, RelayedRow } from './relay.js';
export type { TaskContext, TaskHandler, HandleResult, DropReason, DeferReason } from './handle.js';
export { encodeTask, decodeTask } from './schedule.js';
export type { Json, EntityInput, TaskInput, ScheduledTask, TaskMessage } from './schedule.js';
export { taskChannels } from './hooks.js';
export type {
  TaskHooks,
  LeaseOverwrittenEvent,
  PermanentlyFailedEvent,
  AppliedEvent,
  DispositionEvent,
} from './hooks.js';
export { checkSchemaName } from './schema.js';
export type { Tables } from './schema.js';
export type {
  Queryable,
  QueryResultLike,
  PoolLike,
  PoolClientLike,
  MessageLike,
  ChannelLike,
  ConfirmChannelLike,
} from './ports.js';
