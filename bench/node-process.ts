// A Tributary node for bench/ingest.ts, in its own process so the load generator and the bench
// never share its event loop. Prints {"port"} when listening; over IPC it answers "stats" with
// its counters and memory, and "stop" with a graceful stop.
import { defaults, optionsFromEnv } from "../src/config/env.ts";
import { startNode } from "../src/node.ts";

const env = optionsFromEnv();
const node = await startNode({ ...defaults, ...env, host: "127.0.0.1", port: 0, natsUrl: process.env.NATS_URL! });
// The dedup index loads in the background; the bench starts once every shard is synced.
await node.eventLog.warm([...node.config.current.connections.values()].map((c) => c.connection));

process.on("message", async (m: unknown) => {
  if (m === "stats") {
    // Every thread answering HTTP, summed.
    const c = await node.ingestCounts();
    process.send?.({
      stats: { accepted: c.accepted, duplicates: c.duplicates, rejected: c.rejected },
      inFlightBytes: c.inFlightBytes,
      inFlightRequests: c.inFlightRequests,
      limiterRejected: c.refused,
      indexedIds: c.indexedIds,
      requestsPerThread: c.requestsPerThread,
      memory: process.memoryUsage(),
    });
  } else if (m === "stop") {
    await node.stop();
    process.send?.({ stopped: true });
    process.exit(0);
  }
});
console.log(JSON.stringify({ port: node.port }));
