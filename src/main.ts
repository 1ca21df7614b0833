import { join } from "node:path";
import { StreamLayoutError } from "./bus/errors.ts";
import { EnvironmentError, optionsFromEnv, type NodeOptions } from "./config/env.ts";
import { ConfigError } from "./config/loader.ts";
import { LocalNats } from "./services/nats-server.ts";
import { LocalClickHouse } from "./services/clickhouse-server.ts";
import { ManagedProcess, ServiceStartError } from "./services/managed-process.ts";
import { PortInUseError, ensurePortFree } from "./services/port-check.ts";
import { DataDirInUseError, lockDataDir } from "./services/data-lock.ts";
import { HTTP_PORT, VERSION, startNode, type RunningNode } from "./node.ts";
import { banner } from "./ops/start-banner.ts";
import { USAGE } from "./ops/start-usage.ts";
import { log, logFormat, setLogFormat, setLogLevel } from "./util/log.ts";

/**
 * `npm start`: runs a node. Without NATS_URL / CLICKHOUSE_URL it starts and owns local servers
 * with their data under ./data/, and stops them on exit.
 */
if (process.argv.slice(2).some((a) => a === "--help" || a === "-h")) {
  process.stdout.write(USAGE);
  process.exit(0);
}

const owned: ManagedProcess[] = [];
let releaseData = () => {};
process.on("exit", () => {
  ManagedProcess.killAllSync();
  releaseData();
});

async function main() {
  const options = optionsFromEnv();
  setLogLevel(options.logLevel);
  if (options.logFormat) setLogFormat(options.logFormat);
  // Every port before anything starts: a second `npm start` is refused without touching the
  // first one's services. The node's own listen (without SO_REUSEPORT) is the final word.
  ensurePortFree(HTTP_PORT(options.port), options.host);
  // The data directory is claimed before the services write their config files into it.
  if (!options.natsUrl || !options.clickhouseUrl) releaseData = lockDataDir(options.dataDir);
  const nats = options.natsUrl
    ? undefined
    : await LocalNats.create({ dataDir: join(options.dataDir, "nats"), port: options.natsPort });
  const ch = options.clickhouseUrl
    ? undefined
    : await LocalClickHouse.create({
        dataDir: join(options.dataDir, "clickhouse"),
        httpPort: options.clickhouseHttpPort,
        tcpPort: options.clickhouseTcpPort,
      });
  for (const service of [nats, ch]) for (const use of service?.options.listens ?? []) ensurePortFree(use);

  let natsUrl = options.natsUrl;
  if (nats) {
    await nats.start();
    owned.push(nats);
    natsUrl = nats.url;
    log.info("started local nats-server", { url: nats.url, data: nats.dataDir });
  }
  if (ch) {
    await ch.start();
    owned.push(ch);
    options.clickhouseUrl = ch.url;
    log.info("started local clickhouse-server", { url: ch.url, data: ch.dataDir });
  }
  node = await startNode({ ...options, natsUrl: natsUrl! });
  if (stopping) return; // a signal came while it started: shutdown() is stopping it
  if (logFormat() === "pretty")
    process.stderr.write(
      startBanner(options, node.port, [...node.config.current.connections.values()], natsUrl!, owned.length > 0),
    );
}

let node: RunningNode | undefined;
let stopping = false;
/** Whatever has started so far, in reverse: the node (its in-flight writes), then our services. */
async function shutdown(signal: string) {
  if (stopping) return;
  stopping = true;
  log.info("stopping", { signal });
  await node?.stop().catch((e) => log.error("stop failed", { error: String(e) }));
  for (const p of owned.reverse()) await p.stop();
  process.exit(0);
}
// Installed before anything starts, so a signal during start-up also stops what was started.
process.on("SIGINT", () => void shutdown("SIGINT"));
process.on("SIGTERM", () => void shutdown("SIGTERM"));
// A closed terminal: without this the node dies at once and the services it started, each in
// its own process group, keep their ports, so the next `npm start` is refused.
process.on("SIGHUP", () => void shutdown("SIGHUP"));

function startBanner(
  o: NodeOptions,
  port: number,
  connections: Parameters<typeof banner>[0]["connections"],
  nats: string,
  local: boolean,
): string {
  return banner({
    version: VERSION.version,
    host: o.host,
    port,
    connections,
    admin: { token: !!o.adminToken, dev: o.devAdmin },
    services: { nats, clickhouse: o.clickhouseUrl, local, dataDir: o.dataDir },
  });
}

/** Refusals a user can act on: one line saying why, no stack. */
const readable = (e: unknown) =>
  e instanceof PortInUseError ||
  e instanceof DataDirInUseError ||
  e instanceof ServiceStartError ||
  e instanceof EnvironmentError ||
  e instanceof StreamLayoutError;

main().catch(async (e) => {
  if (e instanceof ConfigError) log.error(e.message);
  else if (readable(e)) log.error(`not started: ${(e as Error).message}`);
  else log.error("start-up failed", { error: String((e as Error)?.stack ?? e) });
  for (const p of owned.reverse()) await p.stop();
  process.exit(1);
});
