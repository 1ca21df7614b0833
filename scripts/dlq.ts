/**
 * `npm run dlq -- <connection> [--pipeline NAME] [--redrive] [--json]` lists the rows ClickHouse
 * refused for their content, and the events a destination refused, with the reason; `--redrive`
 * inserts (or sends) them again, after you fixed the table, the pipeline or the receiver, and
 * removes from the dead-letter stream those that now land.
 * Uses NATS_URL, CLICKHOUSE_URL, TRIBUTARY_PIPELINES and TRIBUTARY_DATABASE like the node.
 */
import { optionsFromEnv } from "../src/config/env.ts";
import { busOptionsOf, connectBus } from "../src/bus/connection.ts";
import { holdsForgottenUser } from "../src/event/selection.ts";
import { watchForgotten } from "../src/pipeline/users/forgotten.ts";
import { DLQ_STREAM, ensureDlqStream, readDeadLetters } from "../src/bus/dead-letters.ts";
import { connectWarehouse, warehouseOptionsOf } from "../src/sink/clickhouse/server.ts";
import { clickHouseSink } from "../src/sink/clickhouse/sink.ts";
import { loadConfig } from "../src/config/loader.ts";
import { resolveDestination } from "../src/config/destination.ts";
import { exportSink } from "../src/pipeline/export/sink.ts";
import type { ExportDeadLetter } from "../src/sink/http/export-sink.ts";
import type { StoredDeadLetter } from "../src/bus/dead-letters.ts";
import { fail, parseCommand, unknownName } from "./cli.ts";
import { configuredNames, storedNames } from "./cli-names.ts";

const USAGE = `usage: npm run dlq -- <connection> [--pipeline NAME] [--redrive] [--json]

Lists a connection's dead letters (rows ClickHouse refused for their content, and events an export
pipeline's destination refused with a 4xx, kept 30 days in TRIBUTARY_DLQ) with the reason, oldest
first. A connection or pipeline that is neither in
$TRIBUTARY_PIPELINES (default ./pipelines) nor in the streams is an error.

      --pipeline NAME   only that pipeline's (a raw connection's table is "(raw table)")
      --redrive         insert them again (an export's: send them to its destination, as
                        configured now, with their messageIds), after fixing the table, the
                        pipeline or the receiver, and remove those that now land; exit 1 if
                        some are still refused
      --json            one JSON document per dead letter
  -h, --help            this help

Environment: NATS_URL, CLICKHOUSE_URL, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, TRIBUTARY_CLICKHOUSE_CLUSTER,
TRIBUTARY_DATABASE, TRIBUTARY_PIPELINES, as for the node.`;

const { values, positionals } = parseCommand({
  name: "dlq",
  usage: USAGE,
  options: { pipeline: { type: "string" }, redrive: { type: "boolean" }, json: { type: "boolean" } },
  positionals: { min: 1, max: 1 },
});
const connection = positionals[0]!;
const o = optionsFromEnv();
const bus = await connectBus(busOptionsOf(o, "tributary-dlq", { adoptLayout: true }));
try {
  // A typo would otherwise read as "0 dead letters".
  const known = await storedNames(bus.jsm, configuredNames(o.pipelinesDir));
  const where = `looked in ${known.where.join(" and ")}`;
  const of = `of connection "${connection}"`;
  const pipelines = known.connections.get(connection);
  if (!pipelines) fail("dlq", unknownName("connection", connection, known.connections.keys(), { where }));
  if (values.pipeline !== undefined && !pipelines.has(values.pipeline))
    fail("dlq", unknownName("pipeline", values.pipeline, pipelines, { of, where }));
  await ensureDlqStream(bus.jsm, o.streamReplicas);
  const letters = await readDeadLetters(bus, connection, values.pipeline);
  if (!values.redrive) {
    for (const l of letters) {
      if (values.json) console.log(JSON.stringify(l));
      else console.log(`#${l.seq}  ${l.at}  ${l.pipeline}  ${l.messageId ?? "-"}  ${l.reason}`);
    }
    if (!values.json) console.error(`${letters.length} dead letter(s)`);
  } else {
    // A forgotten user's letters hold their data: they are deleted, never sent or inserted again.
    const stopForgotten = await watchForgotten(bus.js, o.streamReplicas);
    let dropped = 0;
    for (const l of letters.splice(0)) {
      if (!l.event || typeof l.event !== "object" || !holdsForgottenUser(l.event as Record<string, unknown>)) {
        letters.push(l);
        continue;
      }
      await bus.jsm.streams.deleteMessage(DLQ_STREAM, l.seq);
      console.log(`#${l.seq}  deleted: it holds a forgotten user's data (npm run forget)`);
      dropped++;
    }
    stopForgotten();
    if (dropped) console.error(`redrive: ${dropped} letter(s) of forgotten users deleted`);
    const exports = letters.filter((l) => (l as { kind?: string }).kind === "export");
    let landed = exports.length ? await redriveExports(exports as (StoredDeadLetter & ExportDeadLetter)[]) : 0;
    const rows = letters.filter((l) => (l as { kind?: string }).kind !== "export");
    const warehouse = rows.length ? await connectWarehouse(warehouseOptionsOf(o)) : undefined;
    const byTable = new Map<string, typeof letters>();
    for (const l of rows) {
      // A users pipeline's refused event, not a row: it lands by replaying it once its cause is fixed.
      if ((l as { kind?: string }).kind === "event")
        console.log(
          `#${l.seq}  an event the pipeline refused (${l.messageId ?? "-"}), not a row: fix the cause, then npm run replay`,
        );
    }
    for (const l of rows)
      if ((l as { kind?: string }).kind !== "event")
        byTable.set(l.table ?? "events", [...(byTable.get(l.table ?? "events") ?? []), l]);
    for (const [table, group] of byTable) {
      // No dead-letter destination: a row still refused is a letter already, and stays one.
      const sink = clickHouseSink(warehouse!, table, { inserter: { initialBackoffMs: 200, maxBackoffMs: 2000 } });
      const outcome = await sink.write(group.map((l) => l.event as Record<string, unknown>));
      const still = new Set(outcome.refused.map((r) => r.row));
      for (const l of group) {
        if (still.has(l.event as Record<string, unknown>)) {
          console.log(`#${l.seq}  still refused: ${outcome.refused.find((r) => r.row === l.event)!.reason}`);
          continue;
        }
        await bus.jsm.streams.deleteMessage(DLQ_STREAM, l.seq);
        landed++;
      }
    }
    console.error(`redrive: ${landed} landed and removed, ${letters.length - landed} still refused`);
    await warehouse?.close();
    if (landed < letters.length) process.exitCode = 1;
  }
} finally {
  await bus.close();
}

/**
 * Sends an export pipeline's dead letters to its destination as configured now (fix the receiver
 * or the pipeline first), each user's in the order they were refused. Those the destination takes
 * leave the dead-letter stream; those it refuses again stay (no new letter is written).
 */
async function redriveExports(letters: (StoredDeadLetter & ExportDeadLetter)[]): Promise<number> {
  const config = loadConfig(o.pipelinesDir);
  const byPipeline = new Map<string, typeof letters>();
  for (const l of letters) byPipeline.set(l.pipeline, [...(byPipeline.get(l.pipeline) ?? []), l]);
  let landed = 0;
  for (const [name, group] of byPipeline) {
    const p = config.connections.get(connection)?.pipelines?.find((x) => x.name === name);
    if (!p?.destination) {
      for (const l of group) console.log(`#${l.seq}  pipeline "${name}" has no destination in the configuration now`);
      continue;
    }
    const sink = exportSink(resolveDestination(p.destination));
    const rows = group.map((l) => ({ messageId: l.messageId ?? "", key: l.key, body: l.event }));
    // A destination that stays down (5xx, timeouts) would be retried for ever: give up after a minute.
    const giveUp = setTimeout(() => sink.stop(), 60_000);
    const outcome = await sink.write(rows).catch(() => undefined);
    clearTimeout(giveUp);
    sink.stop();
    if (!outcome) {
      console.log(`pipeline "${name}": the destination did not take the letters within a minute; they stay`);
      continue;
    }
    const still = new Map(outcome.refused.map((r) => [r.row, r.reason]));
    for (const [i, l] of group.entries()) {
      const reason = still.get(rows[i]!);
      if (reason !== undefined) {
        console.log(`#${l.seq}  still refused: ${reason.slice(0, 300)}`);
        continue;
      }
      await bus.jsm.streams.deleteMessage(DLQ_STREAM, l.seq);
      landed++;
    }
  }
  return landed;
}
