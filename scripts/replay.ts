/**
 * `npm run replay -- <connection> --pipeline NAME [--since ISO | --from-seq N [--partition K]] [--until ISO] [--dry-run]`
 * re-runs a pipeline over the events the stream still holds, into the same tables, exactly once
 * as seen by queries. Safe to interrupt (Ctrl-C) and rerun. Uses NATS_URL, CLICKHOUSE_URL,
 * TRIBUTARY_PIPELINES and TRIBUTARY_DATABASE like the node.
 */
import { optionsFromEnv } from "../src/config/env.ts";
import { ConfigError, loadConfig } from "../src/config/loader.ts";
import { busOptionsOf, connectBus } from "../src/bus/connection.ts";
import { connectWarehouse, warehouseOptionsOf } from "../src/sink/clickhouse/server.ts";
import { replay, ReplayError, type ReplayProgress } from "../src/pipeline/replay.ts";
import { parseCommand, usageError } from "./cli.ts";
import { watchForgotten } from "../src/pipeline/users/forgotten.ts";

const USAGE = `usage: npm run replay -- <connection> --pipeline NAME [--since ISO | --from-seq N [--partition K]] [--until ISO] [--dry-run]

Runs a pipeline's current filter, consents and transformation again over the events the stream
still holds, into the same table; rows already loaded are not doubled as seen by queries. Safe
to interrupt (Ctrl-C): the same command resumes after the last batch it loaded. Prints a
progress bar on stderr, then one JSON line with the counts.

      --pipeline NAME   the pipeline to run (required)
      --since ISO       events received from this time on
      --from-seq N      events from this stream sequence on (the node's warnings name it)
      --partition K     only partition K's stream (with TRIBUTARY_STREAM_PARTITIONS > 1; needed by --from-seq)
      --until ISO       events received before this time
      --dry-run         count what would be loaded; load nothing
  -h, --help            this help

Environment: NATS_URL, CLICKHOUSE_URL, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, TRIBUTARY_CLICKHOUSE_CLUSTER,
TRIBUTARY_DATABASE, TRIBUTARY_PIPELINES, as for the node.`;

const spec = {
  name: "replay",
  usage: USAGE,
  options: {
    pipeline: { type: "string" },
    since: { type: "string" },
    "from-seq": { type: "string" },
    partition: { type: "string" },
    until: { type: "string" },
    "dry-run": { type: "boolean" },
  },
  positionals: { min: 1, max: 1 },
} as const;
const { values, positionals } = parseCommand(spec);
if (!values.pipeline) usageError(spec, "--pipeline NAME is required");
const o = optionsFromEnv();
const bus = await connectBus(busOptionsOf(o, "tributary-replay", { adoptLayout: true }));
// Forgotten users' events are dropped by the replay's selection too (npm run forget).
const stopForgotten = await watchForgotten(bus.js, o.streamReplicas);
const warehouse = await connectWarehouse(warehouseOptionsOf(o));
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
    partition: values.partition !== undefined ? Number(values.partition) : undefined,
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
  if (!(e instanceof ReplayError) && !(e instanceof ConfigError)) throw e;
  console.error(`replay: ${e.message}`);
  process.exitCode = 1;
} finally {
  stopForgotten();
  await bus.close();
  await warehouse.close();
}
