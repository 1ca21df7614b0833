import { join } from "node:path";
import { optionsFromEnv } from "./config/env.ts";
import { ConfigError } from "./config/loader.ts";
import { LocalNats } from "./services/nats-server.ts";
import { LocalClickHouse } from "./services/clickhouse-server.ts";
import { ManagedProcess } from "./services/managed-process.ts";
import { startNode } from "./node.ts";
import { log } from "./util/log.ts";

/**
 * `npm start`: runs a node. Without NATS_URL / CLICKHOUSE_URL it starts and owns local servers
 * with their data under ./data/, and stops them on exit.
 */
const options = optionsFromEnv();
const owned: ManagedProcess[] = [];
process.on("exit", () => ManagedProcess.killAllSync());

async function main() {
  let natsUrl = options.natsUrl;
  if (!natsUrl) {
    // Fixed ports so `nats sub` and clients find the local services.
    const nats = await LocalNats.create({ dataDir: join(options.dataDir, "nats"), port: Number(process.env.NATS_PORT ?? 4222) });
    await nats.start();
    owned.push(nats);
    natsUrl = nats.url;
    log.info("started local nats-server", { url: nats.url, data: nats.dataDir });
  }
  if (!options.clickhouseUrl) {
    const ch = await LocalClickHouse.create({
      dataDir: join(options.dataDir, "clickhouse"),
      httpPort: Number(process.env.CLICKHOUSE_HTTP_PORT ?? 8123),
      tcpPort: Number(process.env.CLICKHOUSE_TCP_PORT ?? 9000),
    });
    await ch.start();
    owned.push(ch);
    options.clickhouseUrl = ch.url;
    log.info("started local clickhouse-server", { url: ch.url, data: ch.dataDir });
  }
  const node = await startNode({ ...options, natsUrl });
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("stopping", { signal });
    await node.stop().catch((e) => log.error("stop failed", { error: String(e) }));
    for (const p of owned.reverse()) await p.stop();
    process.exit(0);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
}

main().catch(async (e) => {
  if (e instanceof ConfigError) log.error(e.message);
  else log.error("start-up failed", { error: String((e as Error)?.stack ?? e) });
  for (const p of owned.reverse()) await p.stop();
  process.exit(1);
});
