import type { ServerFeatures } from "../sink/clickhouse/server.ts";
import { eventRow } from "../sink/clickhouse/events-table.ts";
import type { Stage } from "./stage.ts";

/** "Import events into warehouse": each kept event becomes one `events` row of its pipeline. */
export function eventsStage(connection: string, pipeline: string, features: ServerFeatures): Stage {
  return {
    kind: "events",
    table: "events",
    takes: "events",
    toRows: (events) => events.map((e) => eventRow(e, connection, pipeline, features)),
  };
}
