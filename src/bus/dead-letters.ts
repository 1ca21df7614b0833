import { nanos } from "@nats-io/nats-core";
import { StorageType, type JetStreamManager } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";

/** Rows the warehouse refused for their content, kept with the reason for inspection and redrive. */
export const DLQ_STREAM = "TRIBUTARY_DLQ";
export const dlqSubject = (connection: string, pipeline: string) => `tributary.dlq.${connection}.${subjectToken(pipeline)}`;

/** Pipeline names may hold characters a subject token cannot. */
export function subjectToken(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, "_");
}

export async function ensureDlqStream(jsm: JetStreamManager, replicas: number): Promise<void> {
  try {
    await jsm.streams.info(DLQ_STREAM);
  } catch {
    await jsm.streams.add({ name: DLQ_STREAM, subjects: ["tributary.dlq.>"], storage: StorageType.File, num_replicas: replicas, max_age: nanos(30 * 86400_000) });
  }
}

export interface DeadLetter {
  connection: string;
  pipeline: string;
  messageId?: string;
  reason: string;
  at: string;
  event: unknown;
}

export async function publishDeadLetters(bus: Bus, letters: DeadLetter[]): Promise<void> {
  await Promise.all(letters.map((l) => bus.js.publish(dlqSubject(l.connection, l.pipeline), JSON.stringify(l))));
}
