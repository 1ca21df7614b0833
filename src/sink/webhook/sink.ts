import type { DestinationOptions } from "../../config/destination.ts";
import { type Encoder, ExportSink, type ExportSinkOptions } from "../http/export-sink.ts";
import { TIMESTAMP_HEADER, sign } from "./signing.ts";

const CONTENT_TYPE = { "json-array": "application/json", ndjson: "application/x-ndjson", single: "application/json" };

/** The body of a webhook request in the destination's `format`, signed when it has `signing`. */
export function webhookEncoder(d: DestinationOptions, now: () => number = Date.now): Encoder {
  return {
    url: d.url,
    method: d.method,
    request(events) {
      const body =
        d.format === "ndjson" ? `${events.join("\n")}\n` : d.format === "single" ? events[0]! : `[${events.join(",")}]`;
      const headers: Record<string, string> = { "Content-Type": CONTENT_TYPE[d.format] };
      if (d.signing) {
        const ts = Math.floor(now() / 1000);
        headers[TIMESTAMP_HEADER] = String(ts);
        headers[d.signing.header] = sign(d.signing.secret, ts, body);
      }
      return { body, headers };
    },
  };
}

/** A webhook destination (`type: webhook`): any HTTP endpoint. */
export const webhookSink = (
  d: DestinationOptions,
  o: Omit<ExportSinkOptions, "destination" | "encoder"> = {},
): ExportSink => new ExportSink({ ...o, destination: d, encoder: webhookEncoder(d) });
