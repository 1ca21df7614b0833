// A Tributary node with its pipelines for bench/e2e.ts, in its own process so neither the load
// generator nor the bench's ClickHouse polling shares its event loop. Options come from the
// environment (NATS_URL, CLICKHOUSE_URL, TRIBUTARY_PIPELINES, TRIBUTARY_BATCH_*), as for
// `bun src/main.ts` with both URLs set (without CLICKHOUSE_URL it only ingests). Prints {"port"}
// once it listens, its dedup index is loaded and its pipelines run; over IPC it answers "stats"
// with its counters and "stop" with a graceful stop.
import { optionsFromEnv } from "../src/config/env.ts";
import { startNode } from "../src/node.ts";

const env = optionsFromEnv();
const node = await startNode({ ...env, host: "127.0.0.1", port: 0, natsUrl: process.env.NATS_URL! });
await node.eventLog.warm([...node.config.current.connections.values()].map((c) => c.connection));
const manager = env.clickhouseUrl ? await node.pipelinesReady : undefined;

process.on("message", async (m: unknown) => {
  if (m === "stats") {
    process.send?.({
      ingest: await node.ingestCounts(),
      pipelines: Object.fromEntries(
        (await (manager?.snapshots() ?? [])).map((s) => [
          `${s.connection}/${s.pipeline}`,
          { ...s, lastErrors: s.lastErrors.slice(-3) },
        ]),
      ),
      memory: process.memoryUsage(),
    });
  } else if (m === "stop") {
    await node.stop();
    process.send?.({ stopped: true });
    process.exit(0);
  }
});
console.log(JSON.stringify({ port: node.port }));
