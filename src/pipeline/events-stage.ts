import type { ServerFeatures } from "../sink/clickhouse/server.ts";
import { eventRow } from "../sink/clickhouse/events-table.ts";
import type { PipelineStage } from "./worker.ts";

/** "Import events into warehouse": each kept event becomes one `events` row of its pipeline. */
export function eventsStage(connection: string, pipeline: string, features: ServerFeatures): PipelineStage {
  return {
    table: "events",
    toRows: (events) => events.map((e) => eventRow(e, connection, pipeline, features)),
  };
}
