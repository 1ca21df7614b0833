import { DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import { BusUnavailableError } from "./errors.ts";

/** A message as the stream's get API returns it. */
type StoredMessage = Awaited<ReturnType<Bus["jsm"]["streams"]["getMessage"]>>;

/** Messages read one by one (the get API, no consumer) before a range is read with a consumer. */
const GETS = 8;

/**
 * Calls `each` with the headers of every message on `subject` with a sequence in [minSeq, maxSeq],
 * in order: the first `gets` with the stream's get API (no consumer to create, which on a clustered
 * stream is a meta-leader round trip), the rest with a headers-only consumer, which reads a
 * thousand headers in the time of a few gets. Used to confirm a dedup index hit and to catch a
 * shard writer up on another node's writes.
 */
export async function readRange(
  bus: Bus,
  subject: string,
  minSeq: number,
  maxSeq: number,
  timeoutMs: number,
  each: (headers: { get(k: string): string } | undefined, seq: number) => void,
  gets = GETS,
): Promise<void> {
  const stream = bus.layout.streamOfSubject(subject);
  let seq = await walk(bus, stream, subject, minSeq, maxSeq, gets, each);
  if (seq > maxSeq) return;
  try {
    seq = await consume(bus, stream, subject, seq, maxSeq, timeoutMs, each);
  } catch {
    // nats-server 2.9 may place the consumer on a server that is down (it then times out): the
    // stream's leader answers gets meanwhile, one message at a time.
  }
  if (seq <= maxSeq) await walk(bus, stream, subject, seq, maxSeq, Number.POSITIVE_INFINITY, each);
}

/** Up to `limit` messages read with the get API from `seq`; the next sequence to read (past maxSeq when done). */
async function walk(
  bus: Bus,
  stream: string,
  subject: string,
  seq: number,
  maxSeq: number,
  limit: number,
  each: (headers: { get(k: string): string } | undefined, seq: number) => void,
): Promise<number> {
  for (let n = 0; n < limit && seq <= maxSeq; n++) {
    let m: StoredMessage;
    try {
      m = await bus.jsm.streams.getMessage(stream, { seq, next_by_subj: subject } as unknown as { seq: number });
    } catch (e) {
      throw new BusUnavailableError(`cannot read ${subject}: ${(e as Error).message}`, { cause: e });
    }
    if (!m || m.seq > maxSeq) return maxSeq + 1;
    each(m.header, m.seq);
    seq = m.seq + 1;
  }
  return seq;
}

/** The rest with a headers-only consumer; the next sequence to read (past maxSeq when done). */
async function consume(
  bus: Bus,
  stream: string,
  subject: string,
  seq: number,
  maxSeq: number,
  timeoutMs: number,
  each: (headers: { get(k: string): string } | undefined, seq: number) => void,
): Promise<number> {
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
  if (end < seq) return maxSeq + 1;
  const messages = await consumer.consume({ max_messages: 1000 });
  const timer = setTimeout(() => messages.stop(), timeoutMs * 4);
  let next = seq;
  try {
    for await (const m of messages) {
      if (m.seq > maxSeq) return maxSeq + 1;
      each(m.headers, m.seq);
      next = m.seq + 1;
      if (m.seq >= end) return maxSeq + 1;
    }
  } finally {
    clearTimeout(timer);
    messages.stop();
  }
  return next;
}
