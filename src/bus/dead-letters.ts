import { nanos } from "@nats-io/nats-core";
import { StorageType, type JetStreamManager } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";

/** Rows the warehouse refused for their content, kept with the reason for inspection and redrive. */
export const DLQ_STREAM = "TRIBUTARY_DLQ";
export const dlqSubject = (connection: string, pipeline: string) =>
  `tributary.dlq.${connection}.${subjectToken(pipeline)}`;

/**
 * Pipeline names may hold characters a subject token cannot: those (and `%`) are percent-encoded
 * per UTF-8 byte, so two pipelines never share a subject. A name of letters, digits, `_` and `-`
 * is its own token, as it was before.
 */
export function subjectToken(name: string): string {
  let out = "";
  for (const ch of name) {
    if (/^[A-Za-z0-9_-]$/.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, "utf8")) out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

/**
 * The subject earlier versions used (other characters as `_`, so `orders v2` and `orders_v2`
 * shared it). Their letters stay there until they expire; reading a pipeline's letters also reads
 * this subject and keeps those whose `pipeline` field names it.
 */
export const legacyDlqSubject = (connection: string, pipeline: string) =>
  `tributary.dlq.${connection}.${pipeline.replace(/[^A-Za-z0-9_-]/g, "_")}`;

export async function ensureDlqStream(jsm: JetStreamManager, replicas: number): Promise<void> {
  try {
    await jsm.streams.info(DLQ_STREAM);
  } catch {
    await jsm.streams.add({
      name: DLQ_STREAM,
      subjects: ["tributary.dlq.>"],
      storage: StorageType.File,
      num_replicas: replicas,
      max_age: nanos(30 * 86400_000),
    });
  }
}

export interface DeadLetter {
  connection: string;
  pipeline: string;
  /** The table the row was for (letters written before this field existed were for `events`). */
  table?: string;
  messageId?: string;
  reason: string;
  at: string;
  /** The row ClickHouse refused, as it was sent. */
  event: unknown;
}

export interface StoredDeadLetter extends DeadLetter {
  seq: number;
}

/** The dead letters of a connection (one pipeline, or all), oldest first. */
export async function readDeadLetters(bus: Bus, connection: string, pipeline?: string): Promise<StoredDeadLetter[]> {
  const subjects = pipeline
    ? [...new Set([dlqSubject(connection, pipeline), legacyDlqSubject(connection, pipeline)])]
    : [`tributary.dlq.${connection}.>`];
  const out: StoredDeadLetter[] = [];
  for (const subject of subjects) {
    for (const l of await readSubject(bus, subject)) if (!pipeline || l.pipeline === pipeline) out.push(l);
  }
  return out.sort((a, b) => a.seq - b.seq);
}

async function readSubject(bus: Bus, subject: string): Promise<StoredDeadLetter[]> {
  const info = await bus.jsm.streams.info(DLQ_STREAM, { subjects_filter: subject });
  const count = Object.values(info.state.subjects ?? {}).reduce((a, n) => a + n, 0);
  const out: StoredDeadLetter[] = [];
  if (!count) return out;
  const consumer = await bus.js.consumers.get(DLQ_STREAM, { filter_subjects: subject });
  try {
    const messages = await consumer.consume({ max_bytes: 8 * 1024 * 1024 });
    for await (const m of messages) {
      out.push({ ...m.json<DeadLetter>(), seq: m.seq });
      if (m.info.pending === 0) break;
    }
    await messages.close();
  } finally {
    await consumer.delete().catch(() => {});
  }
  return out;
}

/** How many dead letters each pipeline subject holds now. */
export async function deadLetterCounts(bus: Bus, connection: string): Promise<Record<string, number>> {
  const info = await bus.jsm.streams
    .info(DLQ_STREAM, { subjects_filter: `tributary.dlq.${connection}.>` })
    .catch(() => undefined);
  return info?.state.subjects ?? {};
}

export async function publishDeadLetters(bus: Bus, letters: DeadLetter[]): Promise<void> {
  await Promise.all(letters.map((l) => bus.js.publish(dlqSubject(l.connection, l.pipeline), JSON.stringify(l))));
}
