import { DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import { BusUnavailableError } from "./errors.ts";

/** A message as the stream's get API returns it. */
type StoredMessage = Awaited<ReturnType<Bus["jsm"]["streams"]["getMessage"]>>;

/** Messages read one by one (the get API, no consumer) before a range is read with a consumer. */
const GETS = 8;

/**
 * Calls `each` with the headers of every message on `subject` with a sequence in [minSeq, maxSeq]:
 * a few with the stream's get API, the rest (a block of one-event messages) with a headers-only
 * consumer, which reads a thousand headers in the time of a few gets.
 */
export async function readRange(
  bus: Bus,
  subject: string,
  minSeq: number,
  maxSeq: number,
  timeoutMs: number,
  each: (headers: { get(k: string): string } | undefined, seq: number) => void,
): Promise<void> {
  const stream = bus.layout.streamOfSubject(subject);
  let seq = minSeq;
  for (let n = 0; n < GETS && seq <= maxSeq; n++) {
    let m: StoredMessage;
    try {
      m = await bus.jsm.streams.getMessage(stream, { seq, next_by_subj: subject } as unknown as { seq: number });
    } catch (e) {
      throw new BusUnavailableError(`cannot read ${subject} to check duplicates: ${(e as Error).message}`, {
        cause: e,
      });
    }
    if (!m || m.seq > maxSeq) return;
    each(m.header, m.seq);
    seq = m.seq + 1;
  }
  if (seq > maxSeq) return;
  try {
    const consumer = await bus.js.consumers.get(stream, {
      filter_subjects: subject,
      headers_only: true,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: seq,
    });
    // The range's last message may have been removed since (limits, capacity purges): stop at
    // the subject's last message too.
    const last = (await bus.jsm.streams.getMessage(stream, { last_by_subj: subject }))?.seq ?? 0;
    const end = Math.min(maxSeq, last);
    if (end < seq) return;
    const messages = await consumer.consume({ max_messages: 1000 });
    const timer = setTimeout(() => messages.stop(), timeoutMs * 4);
    let reached = false;
    try {
      for await (const m of messages) {
        if (m.seq > maxSeq) {
          reached = true;
          break;
        }
        each(m.headers, m.seq);
        if (m.seq >= end) {
          reached = true;
          break;
        }
      }
    } finally {
      clearTimeout(timer);
      messages.stop();
    }
    if (!reached) throw new Error(`timed out reading up to sequence ${end}`);
  } catch (e) {
    if (e instanceof BusUnavailableError) throw e;
    throw new BusUnavailableError(`cannot read ${subject} to check duplicates: ${(e as Error).message}`, { cause: e });
  }
}
