/**
 * `bun run dlq <connection> [--pipeline NAME] [--redrive] [--json]` lists the rows ClickHouse
 * refused for their content, with its reason; `--redrive` inserts them again (after you fixed the
 * table or the pipeline) and removes from the dead-letter stream those that now land.
 * Uses NATS_URL, CLICKHOUSE_URL and TRIBUTARY_DATABASE like the node.
 */
import { parseArgs } from "node:util";
import { optionsFromEnv } from "../src/config/env.ts";
import { busOptionsOf, connectBus } from "../src/bus/connection.ts";
import { DLQ_STREAM, ensureDlqStream, readDeadLetters } from "../src/bus/dead-letters.ts";
import { connectWarehouse } from "../src/sink/clickhouse/server.ts";
import { Inserter } from "../src/sink/clickhouse/inserter.ts";

const { values, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: { pipeline: { type: "string" }, redrive: { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
});
if (values.help || positionals.length !== 1) {
  console.error("usage: bun run dlq <connection> [--pipeline NAME] [--redrive] [--json]");
  process.exit(values.help ? 0 : 2);
}
const o = optionsFromEnv();
const bus = await connectBus(busOptionsOf(o, "tributary-dlq"));
try {
  await ensureDlqStream(bus.jsm, o.streamReplicas);
  const letters = await readDeadLetters(bus, positionals[0]!, values.pipeline);
  if (!values.redrive) {
    for (const l of letters) {
      if (values.json) console.log(JSON.stringify(l));
      else console.log(`#${l.seq}  ${l.at}  ${l.pipeline}  ${l.messageId ?? "-"}  ${l.reason}`);
    }
    if (!values.json) console.error(`${letters.length} dead letter(s)`);
  } else {
    const warehouse = await connectWarehouse({ url: o.clickhouseUrl ?? "http://127.0.0.1:8123", username: o.clickhouseUser, password: o.clickhousePassword, database: o.database });
    let landed = 0;
    const byTable = new Map<string, typeof letters>();
    for (const l of letters) {
      // A users pipeline's refused event, not a row: it lands by replaying it once its cause is fixed.
      if ((l as { kind?: string }).kind === "event") console.log(`#${l.seq}  an event the pipeline refused (${l.messageId ?? "-"}), not a row: fix the cause, then bun run replay`);
    }
    for (const l of letters) if ((l as { kind?: string }).kind !== "event") byTable.set(l.table ?? "events", [...(byTable.get(l.table ?? "events") ?? []), l]);
    for (const [table, group] of byTable) {
      const inserter = new Inserter(warehouse, table, { initialBackoffMs: 200, maxBackoffMs: 2000 });
      const outcome = await inserter.insert(group.map((l) => l.event as Record<string, unknown>));
      const still = new Set(outcome.rejected.map((r) => r.row));
      for (const l of group) {
        if (still.has(l.event as Record<string, unknown>)) {
          console.log(`#${l.seq}  still refused: ${outcome.rejected.find((r) => r.row === l.event)!.reason}`);
          continue;
        }
        await bus.jsm.streams.deleteMessage(DLQ_STREAM, l.seq);
        landed++;
      }
    }
    console.error(`redrive: ${landed} landed and removed, ${letters.length - landed} still refused`);
    await warehouse.close();
    if (landed < letters.length) process.exitCode = 1;
  }
} finally {
  await bus.close();
}
