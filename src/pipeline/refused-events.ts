import type { DeadLetter } from "../bus/dead-letters.ts";
import { log } from "../util/log.ts";
import type { PipelineStats } from "./stats.ts";

type Json = Record<string, unknown>;

/** Where a stage's refused events go: the pipeline's dead-letter subject. */
export type DeadLetterSink = (letters: DeadLetter[]) => Promise<void>;

/**
 * A dead letter of one event a stage refused (its transformation failed, or gave nothing), not a
 * row ClickHouse refused: fix the pipeline or the sender, then replay it; `kind` tells `npm run dlq`.
 */
export interface RefusedEventLetter extends DeadLetter {
  kind: "event";
}

/**
 * Dead-letters the events a stage refused, before their message is acknowledged, so a refused
 * event is never lost: the publish is retried (200 ms doubling to 5 s) until it succeeds, or, once
 * the stage is `disposed()` and retries reached 5 s, thrown (the batch then comes back after
 * ack_wait). Each refusal is counted and listed in the pipeline's lastErrors.
 */
export async function deadLetterRefused(
  refused: { event: Json; reason: string }[],
  to: { connection: string; pipeline: string; table: string; sink?: DeadLetterSink; disposed(): boolean },
  stats: PipelineStats,
): Promise<void> {
  if (!refused.length) return;
  const at = new Date().toISOString();
  const letters: RefusedEventLetter[] = refused.map(({ event, reason }) => ({
    kind: "event",
    connection: to.connection,
    pipeline: to.pipeline,
    table: to.table,
    messageId: event.messageId as string,
    reason,
    at,
    event,
  }));
  if (to.sink) {
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await to.sink(letters);
        break;
      } catch (e) {
        if (to.disposed() && delay >= 5000) throw e;
        log.warn("dead-letter publish failed; retrying", { pipeline: to.pipeline, error: String(e) });
        await Bun.sleep(delay);
      }
    }
    stats.deadLettered += letters.length;
  }
  for (const l of letters) stats.recordError(`pipeline "${to.pipeline}": ${l.reason}`, l.messageId);
}
