/**
 * `bun run replay <connection> --pipeline NAME [--since ISO | --from-seq N] [--until ISO] [--dry-run]`
 * re-runs a pipeline over the events the stream still holds, into the same tables, exactly once
 * as seen by queries. Safe to interrupt (Ctrl-C) and rerun. Uses NATS_URL, CLICKHOUSE_URL,
 * TRIBUTARY_PIPELINES and TRIBUTARY_DATABASE like the node.
 */
import { parseArgs } from "node:util";
import { optionsFromEnv } from "../src/config/env.ts";
import { loadConfig } from "../src/config/loader.ts";
import { busOptionsOf, connectBus } from "../src/bus/connection.ts";
import { connectWarehouse } from "../src/sink/clickhouse/server.ts";
import { replay, ReplayError, type ReplayProgress } from "../src/pipeline/replay.ts";

const { values, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    pipeline: { type: "string" },
    since: { type: "string" },
    "from-seq": { type: "string" },
    until: { type: "string" },
    "dry-run": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
});
const usage = "usage: bun run replay <connection> --pipeline NAME [--since ISO | --from-seq N] [--until ISO] [--dry-run]";
if (values.help || positionals.length !== 1 || !values.pipeline) {
  console.error(usage);
  process.exit(values.help ? 0 : 2);
}
const o = optionsFromEnv();
const bus = await connectBus(busOptionsOf(o, "tributary-replay"));
const warehouse = await connectWarehouse({ url: o.clickhouseUrl ?? "http://127.0.0.1:8123", username: o.clickhouseUser, password: o.clickhousePassword, database: o.database });
const abort = new AbortController();
process.on("SIGINT", () => abort.abort());

const tty = process.stderr.isTTY;
const bar = (p: ReplayProgress) => {
  const pct = p.total ? p.done / p.total : 1;
  const width = 30;
  const eta = p.etaSeconds === null ? "?" : `${Math.ceil(p.etaSeconds)}s`;
  const line = `[${"#".repeat(Math.round(pct * width)).padEnd(width, ".")}] ${(pct * 100).toFixed(1)}%  ${p.received} events, ${p.kept} kept, ${p.loaded} loaded, ${p.failed} failed  ${Math.round(p.eventsPerSecond)} ev/s  ETA ${eta}`;
  process.stderr.write(tty ? `\r${line}` : `${line}\n`);
};
let lastDraw = 0;
try {
  const result = await replay(bus, warehouse, loadConfig(o.pipelinesDir), {
    connection: positionals[0]!,
    pipeline: values.pipeline,
    since: values.since,
    fromSeq: values["from-seq"] ? Number(values["from-seq"]) : undefined,
    until: values.until,
    dryRun: values["dry-run"],
    signal: abort.signal,
    onProgress: (p) => {
      if (Date.now() - lastDraw > 200) (lastDraw = Date.now()), bar(p);
    },
  });
  bar(result);
  process.stderr.write("\n");
  console.log(JSON.stringify({ ...result, interrupted: abort.signal.aborted, dryRun: !!values["dry-run"] }));
} catch (e) {
  if (!(e instanceof ReplayError)) throw e;
  console.error(e.message);
  process.exitCode = 1;
} finally {
  await bus.close();
  await warehouse.close();
}
