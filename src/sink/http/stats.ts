/** Latency of the answers with one HTTP status (or `timeout`, `error` for none). */
export interface LatencySummary {
  count: number;
  totalMs: number;
  maxMs: number;
}

/**
 * Counters of one export destination on this node, as `/v1/pipelines` (field `export`) and
 * `/metrics` show them. Events are counted in `sent` and `deadLettered`; requests in `retried`,
 * `failed` and `inFlight`.
 */
export class ExportStats {
  /** Events the destination answered 2xx for. */
  sent = 0;
  /** Requests sent again after a 408, 429, 5xx, timeout or connection error. */
  retried = 0;
  /** Requests that got no 2xx (each attempt: a batch retried three times counts three). */
  failed = 0;
  /** Events stored as dead letters (refused with another 4xx, or their transformation failed). */
  deadLettered = 0;
  /** Requests under way now. */
  inFlight = 0;
  /** Events waiting in memory for a request. */
  queued = 0;
  /** By status: `200`, `429`, `503`, …, `timeout`, `error`. */
  readonly latency = new Map<string, LatencySummary>();
  lastSentAt?: string;

  observe(status: string, ms: number): void {
    const l = this.latency.get(status) ?? { count: 0, totalMs: 0, maxMs: 0 };
    l.count++;
    l.totalMs += ms;
    l.maxMs = Math.max(l.maxMs, ms);
    this.latency.set(status, l);
  }

  snapshot(): ExportSnapshot {
    return {
      sent: this.sent,
      retried: this.retried,
      failed: this.failed,
      deadLettered: this.deadLettered,
      inFlight: this.inFlight,
      queued: this.queued,
      lastSentAt: this.lastSentAt ?? null,
      latencyByStatus: Object.fromEntries(
        [...this.latency].map(([status, l]) => [
          status,
          { count: l.count, meanMs: Math.round(l.totalMs / l.count), maxMs: Math.round(l.maxMs) },
        ]),
      ),
    };
  }
}

export interface ExportSnapshot {
  sent: number;
  retried: number;
  failed: number;
  deadLettered: number;
  inFlight: number;
  queued: number;
  lastSentAt: string | null;
  latencyByStatus: Record<string, { count: number; meanMs: number; maxMs: number }>;
}
