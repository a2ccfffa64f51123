// The columns of a scenario's table and the primary figure it ranks by, built
// from the Result field or metric they show, so every scenario's header and
// formatting read alike.

import type { Column, Format, ScenarioReport } from './types.js';

/** The primary figure of a scenario that ranks by rate (opsPerSec, higher is better) under `header`. */
export function ratePrimary(header: string): ScenarioReport['primary'] {
  return { header, value: (r) => r.opsPerSec, higherIsBetter: true, format: 'rate' };
}

/** The primary figure of a scenario that ranks by one of its numeric metrics. */
export function metricPrimary(
  header: string,
  metric: string,
  higherIsBetter: boolean,
  format: Format = 'num',
): ScenarioReport['primary'] {
  return {
    header,
    value: (r) => {
      const v = r.metrics[metric];
      return typeof v === 'number' ? v : null;
    },
    higherIsBetter,
    format,
  };
}

/** A column of one of a result's metrics ('-' where a subject has none). */
export function metricColumn(header: string, metric: string, format: Format): Column {
  return { header, value: (r) => r.metrics[metric] ?? null, format };
}

/** A column of a result's p50 or p99 latency; `what` names the latency where it is not the operation's ('gap', 'ELD'). */
export function latencyColumn(percentile: 'p50' | 'p99', what = ''): Column & Pick<ScenarioReport['primary'], 'value'> {
  const header = `${what ? `${what} ` : ''}${percentile} ms`;
  return { header, value: (r) => (percentile === 'p50' ? r.p50Ms : r.p99Ms), format: 'ms' };
}

/** The primary figure of a scenario that ranks by a latency percentile (lower is better). */
export function latencyPrimary(percentile: 'p50' | 'p99'): ScenarioReport['primary'] {
  return { ...latencyColumn(percentile), higherIsBetter: false };
}

/** The p50 and p99 latency columns, side by side. */
export function latencyColumns(what = ''): Column[] {
  return [latencyColumn('p50', what), latencyColumn('p99', what)];
}

/** The cost columns of loopResult rows: server operations and client CPU per `unit` (cycle, attempt). */
export function loopCostColumns(unit: string): Column[] {
  return [
    metricColumn(`server ops/${unit}`, 'serverOpsPerOp', 'num'),
    metricColumn(`client CPU µs/${unit}`, 'cpuUsPerOp', 'num'),
  ];
}
