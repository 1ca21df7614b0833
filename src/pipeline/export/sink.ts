import type { DestinationOptions } from "../../config/destination.ts";
import type { ExportSink, ExportSinkOptions } from "../../sink/http/export-sink.ts";
import { segmentSink } from "../../sink/segment/sink.ts";
import { webhookSink } from "../../sink/webhook/sink.ts";

/** The one way the export worker, replay and scripts/dlq.ts build a destination's sink. */
export function exportSink(
  d: DestinationOptions,
  o: Omit<ExportSinkOptions, "destination" | "encoder"> = {},
): ExportSink {
  return d.type === "segment" ? segmentSink(d, o) : webhookSink(d, o);
}
