// Output: ratios to the baseline, one Markdown table per scenario (pasteable
// into docs/benchmarks.md), the JSON document, and a hand-drawn SVG bar chart.

import type { Format, MetricValue, Result, ScenarioReport } from './types.js';

export interface SystemInfo {
  node: string;
  platform: string;
  cpu: string;
  cores: number;
  memoryGb: number;
  loadAverage: number;
  memcached: string | null;
  redis: string | null;
  postgres: string | null;
  memcacheServers: string | null;
  /** The command line of the memcached the bench started itself, null when MEMCACHE_SERVERS was used. */
  memcachedStartedWith: string | null;
  durationSeconds: number;
  rounds: number;
  date: string;
}

export function ratioOf(a: number | null | undefined, b: number | null | undefined): number | null {
  if (a === null || a === undefined || b === null || b === undefined || b === 0) return null;
  return a / b;
}

/** Fills `ratio` (primary metric / the baseline's, same variant) and `baseline` on every result. */
export function applyRatios(report: ScenarioReport): void {
  for (const r of report.results) {
    const base = report.results.find((b) => b.subject === report.baseline && b.variant === r.variant);
    r.baseline = r.subject === report.baseline;
    r.ratio = base ? ratioOf(report.primary.value(r), report.primary.value(base)) : null;
  }
}

/** Variants in first-seen order, each with its results best first. */
export function grouped(report: ScenarioReport): { variant: string; results: Result[] }[] {
  const variants = [...new Set(report.results.map((r) => r.variant))];
  const sign = report.primary.higherIsBetter ? -1 : 1;
  return variants.map((variant) => ({
    variant,
    results: report.results
      .filter((r) => r.variant === variant)
      .sort((a, b) => {
        const va = report.primary.value(a);
        const vb = report.primary.value(b);
        if (va === null) return 1;
        if (vb === null) return -1;
        return sign * (va - vb);
      }),
  }));
}

// ------------------------------------------------------------------ formats

const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

export function fmtRatio(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return '-';
  return `${x < 10 ? x.toFixed(2) : x.toFixed(1)}x`;
}

export function fmt(value: MetricValue | undefined, format: Format): string {
  if (value === null || value === undefined) return '-';
  if (typeof value === 'boolean') return value ? 'yes' : 'NO';
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value)) return String(value);
  switch (format) {
    case 'int':
    case 'rate':
      return intFmt.format(value);
    case 'ms':
      return value < 1
        ? value.toFixed(3)
        : value < 10
          ? value.toFixed(2)
          : value < 1000
            ? value.toFixed(1)
            : intFmt.format(value);
    case 'pct':
      return `${value < 10 ? value.toFixed(1) : value.toFixed(0)}%`;
    case 'x':
      return fmtRatio(value);
    case 'bytes':
      return value < 1024 ? `${value.toFixed(0)} B` : `${(value / 1024).toFixed(2)} KB`;
    case 'num':
      return Math.abs(value) < 10 ? value.toFixed(2) : Math.abs(value) < 100 ? value.toFixed(1) : intFmt.format(value);
    case 'text':
      return String(value);
  }
}

// ------------------------------------------------------------------- tables

export function systemLine(s: SystemInfo): string {
  const servers = [
    s.memcached ? `memcached ${s.memcached}` : 'memcached n/a',
    s.redis ? `Redis ${s.redis}` : 'Redis n/a',
    s.postgres ? `PostgreSQL ${s.postgres}` : 'PostgreSQL n/a',
  ].join(', ');
  return (
    `System: Node ${s.node}, ${s.cpu} (${s.cores} cores, ${s.memoryGb} GB, load ${s.loadAverage} at start), ${s.platform}; ${servers}; ` +
    `${s.durationSeconds} s per measurement in ${s.rounds} interleaved rounds; ${s.date}`
  );
}

export function renderTable(report: ScenarioReport): string {
  const lines: string[] = [`### ${report.scenario}: ${report.title}`, ''];
  if (report.error) lines.push(`FAILED: ${report.error}`, '');
  if (report.results.length > 0) {
    const multi =
      new Set(report.results.map((r) => r.variant)).size > 1 || report.results.some((r) => r.variant !== '');
    const headers = [
      ...(multi ? ['mode'] : []),
      'subject',
      report.primary.header,
      '±',
      `vs ${report.baseline}`,
      ...report.columns.map((c) => c.header),
    ];
    const align = headers.map((_, i) => (i < (multi ? 2 : 1) ? ':--' : '--:'));
    const rows: string[][] = [];
    for (const g of grouped(report)) {
      for (const r of g.results) {
        rows.push([
          ...(multi ? [g.variant] : []),
          r.subject + (r.baseline ? ' (baseline)' : ''),
          fmt(report.primary.value(r), report.primary.format),
          r.spreadPct === null ? '-' : `${r.spreadPct.toFixed(1)}%`,
          fmtRatio(r.ratio),
          ...report.columns.map((c) => fmt(c.value(r), c.format)),
        ]);
      }
    }
    const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
    const line = (cells: string[]): string =>
      `| ${cells.map((c, i) => (align[i] === ':--' ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
    lines.push(line(headers));
    lines.push(
      `|${align.map((a, i) => (a === ':--' ? ':' + '-'.repeat((widths[i] ?? 1) + 1) : '-'.repeat((widths[i] ?? 1) + 1) + ':')).join('|')}|`,
    );
    rows.forEach((row) => lines.push(line(row)));
    lines.push('');
  }
  for (const r of report.results) {
    if (r.errors > 0)
      lines.push(
        `- ${r.subject}${r.variant ? ` (${r.variant})` : ''}: ${r.errors} failed operations, first: ${r.firstError ?? '?'}`,
      );
  }
  for (const s of report.skipped) lines.push(`- skipped ${s.subject}: ${s.reason}`);
  for (const n of report.notes) lines.push(`- ${n}`);
  return lines.join('\n');
}

// --------------------------------------------------------------------- JSON

export function jsonDocument(system: SystemInfo, reports: readonly ScenarioReport[]): unknown {
  return {
    system,
    results: reports.flatMap((r) => r.results),
    scenarios: reports.map((r) => ({
      scenario: r.scenario,
      title: r.title,
      baseline: r.baseline,
      primary: { metric: r.primary.header, higherIsBetter: r.primary.higherIsBetter },
      skipped: r.skipped,
      notes: r.notes,
      ...(r.error ? { error: r.error } : {}),
    })),
  };
}

// ---------------------------------------------------------------------- SVG

const escapeXml = (s: string): string =>
  s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);

function wrap(pieces: readonly string[], width: number): string[] {
  const lines: string[] = [];
  for (const piece of pieces) {
    const last = lines[lines.length - 1];
    if (last !== undefined && last.length + piece.length + 2 <= width) lines[lines.length - 1] = `${last}; ${piece}`;
    else lines.push(piece);
  }
  return lines;
}

/**
 * One block per scenario and mode: a horizontal bar per subject for the
 * scenario's primary metric, scaled to the largest in the block, with the value
 * and the ratio to the baseline written beside it. memlock bars are coloured.
 */
export function renderSvg(system: SystemInfo, reports: readonly ScenarioReport[]): string {
  const width = 860;
  const labelW = 250;
  const barMax = 400;
  const rowH = 20;
  const parts: string[] = [];
  let y = 28;
  parts.push(`<text x="12" y="${y}" class="title">memlock benchmark</text>`);
  y += 18;
  // The System line is too long for one line of the chart: wrap it at its '; ' separators.
  for (const line of wrap(systemLine(system).split('; '), 140)) {
    parts.push(`<text x="12" y="${y}" class="small">${escapeXml(line)}</text>`);
    y += 14;
  }
  for (const report of reports) {
    if (report.results.length === 0) continue;
    y += 22;
    const direction = report.primary.higherIsBetter ? 'higher is better' : 'lower is better';
    parts.push(
      `<text x="12" y="${y}" class="head">${escapeXml(`${report.scenario}: ${report.primary.header} (${direction})`)}</text>`,
    );
    for (const g of grouped(report)) {
      const values = g.results.map((r) => report.primary.value(r) ?? 0);
      const max = Math.max(...values, Number.MIN_VALUE);
      if (g.variant) {
        y += 16;
        parts.push(`<text x="20" y="${y}" class="small">${escapeXml(g.variant)}</text>`);
      }
      for (const r of g.results) {
        y += rowH;
        const value = report.primary.value(r);
        const w = value === null ? 0 : Math.max(1, (value / max) * barMax);
        const cls = r.subject.startsWith('memlock') ? 'bar mem' : r.baseline ? 'bar base' : 'bar';
        const text = `${fmt(value, report.primary.format)}  ${r.baseline ? 'baseline' : fmtRatio(r.ratio)}`;
        parts.push(
          `<text x="${labelW - 8}" y="${y - 5}" class="label" text-anchor="end">${escapeXml(r.subject)}</text>`,
          `<rect x="${labelW}" y="${y - 16}" width="${w.toFixed(1)}" height="14" class="${cls}"/>`,
          `<text x="${(labelW + w + 6).toFixed(1)}" y="${y - 5}" class="label">${escapeXml(text)}</text>`,
        );
      }
    }
  }
  y += 20;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}">`,
    '<style>text{font-family:system-ui,sans-serif;fill:#1a202c}.title{font-size:18px;font-weight:600}.head{font-size:14px;font-weight:600}' +
      '.label{font-size:12px}.small{font-size:11px;fill:#4a5568}.bar{fill:#a0aec0}.base{fill:#718096}.mem{fill:#2b6cb0}</style>',
    `<rect width="${width}" height="${y}" fill="#ffffff"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
