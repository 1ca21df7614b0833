import { DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "../../src/bus/connection.ts";
import { STREAM, connectionSubjects } from "../../src/bus/subjects.ts";

/**
 * Every event stored for a connection, read back from JetStream (what consumers will see), in
 * stream order: from the single stream by default, or from one partition's stream with its filter.
 */
export async function storedEvents(
  bus: Bus,
  connection: string,
  where: { stream: string; filter: string } = { stream: STREAM, filter: connectionSubjects(connection) },
): Promise<Record<string, any>[]> {
  const info = await bus.jsm.streams.info(where.stream, { subjects_filter: where.filter });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, n) => a + (n as number), 0);
  if (total === 0) return [];
  const c = await bus.js.consumers.get(where.stream, {
    filter_subjects: where.filter,
    deliver_policy: DeliverPolicy.All,
  });
  const out: Record<string, any>[] = [];
  const messages = await c.consume();
  let seen = 0;
  for await (const m of messages) {
    out.push(...(m.json() as Record<string, any>[]));
    if (++seen >= total) break;
  }
  messages.stop();
  return out;
}
