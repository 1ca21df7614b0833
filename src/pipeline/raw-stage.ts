import type { Warehouse } from "../sink/clickhouse/server.ts";
import { timeCell } from "./users/customer-model.ts";
import type { RawRecord } from "../event/envelope.ts";
import type { Stage } from "./stage.ts";

/** Moved to the record envelope; re-exported for importers not yet updated. */

/** The internal pipeline that loads a raw connection's deliveries into its table. */
export const RAW_PIPELINE = "(raw table)";

export function rawStage(connection: string, table: string, w: Warehouse): Stage {
  return {
    kind: "raw",
    table,
    takes: "raw",
    toRows: (records) =>
      (records as unknown as RawRecord[]).flatMap((r) => {
        const receivedAt = timeCell(Date.parse(r.raw.receivedAt), w.features);
        const headers = JSON.stringify(r.raw.headers);
        return r.raw.rows.map((body, i) => ({
          connection,
          delivery_id: r.messageId,
          row_index: i,
          received_at: receivedAt,
          body,
          headers,
        }));
      }),
  };
}
