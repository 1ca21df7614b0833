import type { Warehouse } from "../sink/clickhouse/server.ts";
import { timeCell } from "./users/customer-model.ts";
import type { PipelineStage } from "./worker.ts";

/** The internal pipeline that loads a raw connection's deliveries into its table. */
export const RAW_PIPELINE = "(raw table)";

/** What a raw webhook delivery looks like in the stream (and to `nats sub`). */
export interface RawRecord {
  messageId: string;
  raw: { receivedAt: string; headers: Record<string, string>; rows: string[] };
}

export function rawStage(connection: string, table: string, w: Warehouse): PipelineStage {
  return {
    table,
    raw: true,
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
