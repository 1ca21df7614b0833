/**
 * Where events enter the node. A source is specified by its options and builds itself against
 * what the node shares (as Vector's `SourceConfig::build`), then is mounted by the node as an
 * Elysia plugin: the node knows sources only through this interface.
 *
 * - `httpEvents` (server.ts): the Segment/RudderStack-compatible `/v1/*` and beacon routes.
 * - `rawWebhooks` (webhooks/route.ts): `/v1/webhooks/:connection`, any payload, stored raw.
 * - `webhookEvents` (webhooks/events.ts): the events a raw connection's `events:` derives from a
 *   delivery; fed by the raw webhooks, it has no routes of its own.
 *
 * Every source with routes takes its bodies through the one {@link Intake}.
 */
import type { AnyElysia } from "elysia";
import type { ConfigStore } from "../config/store.ts";
import type { EventLog } from "../bus/event-log.ts";
import type { IngestStats } from "./handler.ts";
import { Intake } from "./intake.ts";
import { InFlightLimiter } from "./overload.ts";

/** What every source of one node shares. */
export interface SourceContext {
  config: ConfigStore;
  eventLog: EventLog;
  /** Bodies being worked on, over all sources; beyond the budget, 429. */
  intake: Intake;
  /** The node's event counters: every source that appends events counts into them. */
  stats: IngestStats;
}

export interface Source {
  readonly name: string;
  /** The routes it answers, as an Elysia plugin; none for a source fed by another. */
  readonly routes?: AnyElysia;
  /** What it counts. */
  readonly stats: IngestStats;
}

/** A source before it runs: its options, and how it builds itself against the node. */
export interface SourceSpec<S extends Source = Source> {
  readonly name: string;
  build(cx: SourceContext): S;
}

export interface IntakeBudget {
  /** Total decompressed body bytes being processed at once; beyond it, 429. */
  maxInFlightBytes: number;
  maxInFlightRequests: number;
}

export function sourceContext(config: ConfigStore, eventLog: EventLog, budget: IntakeBudget): SourceContext {
  return {
    config,
    eventLog,
    intake: new Intake(new InFlightLimiter(budget.maxInFlightBytes, budget.maxInFlightRequests)),
    stats: { accepted: 0, duplicates: 0, rejected: 0 },
  };
}
