import type { DestinationOptions } from "../../config/destination.ts";
import type { ExportRow } from "../../sink/http/export-sink.ts";
import { segmentBody } from "../../sink/segment/sink.ts";
import type { Stage } from "../stage.ts";
import type { PipelineStats } from "../stats.ts";
import { deadLetterRefused, type DeadLetterSink } from "../refused-events.ts";
import type { SandboxedTransform } from "../transform/types.ts";

type Json = Record<string, unknown>;

/** Where refused events go (the pipeline's dead-letter subject); undefined in a dry run. */

/** The order a destination keeps: per `userId`, else `anonymousId` (else the event alone). */
export function orderingKey(e: Json): string {
  const id = (v: unknown) => (typeof v === "string" && v !== "" ? v : typeof v === "number" ? String(v) : undefined);
  const user = id(e.userId);
  if (user !== undefined) return `u:${user}`;
  const anonymous = id(e.anonymousId);
  if (anonymous !== undefined) return `a:${anonymous}`;
  return `m:${String(e.messageId)}`;
}

/**
 * An export pipeline's stage: each kept event becomes the body sent for it — the event itself (for
 * `segment`, without the first hop's `sentAt`/`receivedAt`), or its transformation's output. A
 * transformation that fails, or returns nothing, is that event's failure: recorded with its
 * messageId and dead-lettered as an event (`kind: "event"`: fix the cause, then replay).
 */
export class ExportStage implements Stage {
  readonly kind = "export";
  readonly takes = "events";
  #disposed = false;

  constructor(
    readonly connection: string,
    readonly pipeline: string,
    readonly destination: DestinationOptions,
    readonly table: string,
    readonly transform?: SandboxedTransform,
    readonly deadLetters?: DeadLetterSink,
  ) {}

  async toRows(events: Json[], stats: PipelineStats): Promise<ExportRow[]> {
    if (!events.length) return [];
    const plain = (e: Json) => (this.destination.type === "segment" ? segmentBody(e) : e);
    if (!this.transform)
      return events.map((e) => ({ messageId: String(e.messageId), key: orderingKey(e), body: plain(e) }));
    const results = await this.transform.transformBatch(events);
    const rows: ExportRow[] = [];
    const refused: { event: Json; reason: string }[] = [];
    for (const [i, e] of events.entries()) {
      const r = results[i]!;
      const messageId = String(e.messageId);
      if (!r.ok) refused.push({ event: e, reason: `transformation failed: ${r.error}` });
      else if (r.value === undefined || r.value === null)
        refused.push({ event: e, reason: "transformation returned nothing to send" });
      else {
        stats.transformed++;
        stats.onOutcome?.(messageId, "transformed");
        rows.push({ messageId, key: orderingKey(e), body: r.value });
      }
    }
    await this.#deadLetter(refused, stats);
    return rows;
  }

  /** Stored before the message is acknowledged, so a refused event is never lost. */
  #deadLetter(refused: { event: Json; reason: string }[], stats: PipelineStats): Promise<void> {
    const to = { connection: this.connection, pipeline: this.pipeline, table: this.table };
    return deadLetterRefused(refused, { ...to, sink: this.deadLetters, disposed: () => this.#disposed }, stats);
  }

  dispose(): void {
    this.#disposed = true;
    this.transform?.dispose();
  }
}
