// `npm run bench:capacity`: what each component costs per event at a steady load, read from
// /proc during one run: CPU-seconds (utime + stime) and peak RSS per million events for the
// ingest node, NATS (each server separately on a cluster), the pipeline workers and ClickHouse,
// and events/s per core for each.
//
// It starts its own nats-server (or, with CAPACITY_REPLICAS=3, three clustered on loopback and
// the events streams on 3 replicas) and clickhouse-server (temporary data dirs, free ports), and
// two Tributary nodes (`bun src/main.ts`), split the way a deployment may split them:
//   ingest    serves HTTP; its connections have no pipelines, so it runs no pipeline worker
//   pipeline  the same connections, each with one `import: events` pipeline (no filter); no HTTP traffic
// A node is its process and its descendants (the pipeline worker processes). With
// CAPACITY_PARTITIONS=N both nodes run TRIBUTARY_STREAM_PARTITIONS=N (N events streams, a
// connection's 4 shards spread over them by a hash of connection and shard), and the load goes
// to CAPACITY_CONNECTIONS connections (default 8 with partitions, else 1) so that the shards
// spread: the loadgen sends request n with connection n mod CAPACITY_CONNECTIONS's write key.
// The load generator (bench/loadgen.ts, its own process) posts CAPACITY_BATCH-event requests of
// the test/fixtures events (Segment track and identify, a curl track), every messageId unique, open
// loop at CAPACITY_RATE events/s: first CAPACITY_WARMUP_SECONDS (not measured, drained), then
// CAPACITY_SECONDS measured. The window runs from the measured load's first request until ClickHouse
// holds every accepted event, plus CAPACITY_SETTLE_SECONDS for the merges the inserts caused;
// each process's idle CPU over a few seconds before the load is reported beside it.
// For each events stream it reports the messages and bytes stored in the window (last_seq and
// bytes before and after) and the largest stream's share of them, who led it, and each NATS
// server's CPU beside the streams and consumers it led (a leader does more work than a follower).
// At the end it checks that every accepted event is in `tributary.events FINAL` exactly once,
// under the connection its key names (request by request, from the loadgen's 2xx answers: none
// missing, none twice), reads the streams' bytes per stored event and ClickHouse's bytes on disk
// per row, and prints a markdown table and one JSON line. Exit 1 if the pipeline did not keep up
// or events went missing.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { createClient, ClickHouseLogLevel } from "@clickhouse/client";
import { LocalNats } from "../src/services/nats-server.ts";
import { LocalClickHouse } from "../src/services/clickhouse-server.ts";
import { ManagedProcess } from "../src/services/managed-process.ts";
import { freePort, waitForPort } from "../src/services/ports.ts";
import { DEDUP_SHARDS, MAX_PARTITIONS, streamLayout } from "../src/bus/subjects.ts";
import { fixtureEvents, type LoadResult, type LoadSpec } from "./loadgen.ts";
import { parseCommand } from "../scripts/cli.ts";
import { Component, nodeMembers } from "./capacity/proc.ts";
import { clientBytes, clientDelta, consumers, streamStates, varz, varzDelta, writesBetween } from "./capacity/nats.ts";
import { verify } from "./capacity/verify.ts";
import { report } from "./capacity/report.ts";

const ENVIRONMENT = `Environment: CAPACITY_RATE (20000), CAPACITY_SECONDS (60), CAPACITY_WARMUP_SECONDS (5),
CAPACITY_SETTLE_SECONDS (5), CAPACITY_BATCH (100), CAPACITY_REPLICAS (1; 3 runs a 3-server
cluster), CAPACITY_PARTITIONS (1: events streams, TRIBUTARY_STREAM_PARTITIONS of both nodes),
CAPACITY_CONNECTIONS (8 with partitions, else 1: connections the load is spread over, round-robin
by request), CAPACITY_FIXTURES (test/fixtures).`;

// Before anything starts: `--help` prints this and exits, an unknown flag exits 2.
parseCommand({
  name: "bench:capacity",
  options: {},
  usage: `usage: npm run bench:capacity

What each component (ingest node, NATS and each of its servers, pipeline workers, ClickHouse) costs
per event at a steady load: CPU-seconds and peak RSS per million events, events/s per core; each
events stream's share of the writes and who led it. Starts its own services and two nodes; checks
every accepted event is stored exactly once; prints a markdown table and one JSON line. Exit 1 if
the pipeline did not keep up or events went missing.

  -h, --help   this help

${ENVIRONMENT}`,
});

/** Every setting, its default and its check, in one place. */
function options(env: Record<string, string | undefined>) {
  const int = (name: string, d: number, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const v = env[name] ? Number(env[name]) : d;
    if (!Number.isInteger(v) || v < min || v > max) {
      console.error(`bench:capacity: ${name} must be an integer from ${min} to ${max}, not ${env[name]}`);
      process.exit(2);
    }
    return v;
  };
  const partitions = int("CAPACITY_PARTITIONS", 1, 1, MAX_PARTITIONS);
  return {
    rate: int("CAPACITY_RATE", 20_000, 1),
    seconds: int("CAPACITY_SECONDS", 60, 1),
    warmupSeconds: int("CAPACITY_WARMUP_SECONDS", 5, 1),
    settleSeconds: int("CAPACITY_SETTLE_SECONDS", 5, 0),
    batch: int("CAPACITY_BATCH", 100, 1),
    replicas: int("CAPACITY_REPLICAS", 1, 1, 5),
    partitions,
    connections: int("CAPACITY_CONNECTIONS", partitions > 1 ? 8 : 1, 1, 999),
    fixtures: resolve(env.CAPACITY_FIXTURES ?? join(import.meta.dir, "../test/fixtures")),
  };
}
const O = options(process.env);
const BUN = process.execPath;
const MAIN = join(import.meta.dir, "../src/main.ts");
// One connection keeps the name earlier runs had; keys are of one length (the loadgen rewrites them in place).
const CONNECTIONS = Array.from({ length: O.connections }, (_, i) =>
  O.connections === 1 ? "capacity" : `capacity-${i}`,
);
const KEYS = CONNECTIONS.map((_, i) =>
  O.connections === 1 ? "capacity-bench-write-key" : `capacity-bench-write-key-${String(i).padStart(3, "0")}`,
);
const connectionOf = (request: number) => CONNECTIONS[request % CONNECTIONS.length]!;
const layout = streamLayout(O.partitions);

const children = new Set<Subprocess>();
let dir: string | undefined;
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  ManagedProcess.killAllSync();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
for (const s of ["SIGINT", "SIGTERM"] as const) process.on(s, () => process.exit(130));
const say = (s: string) => process.stderr.write(`[capacity] ${s}\n`);

// ---------------------------------------------------------------- processes

class Node {
  proc?: Subprocess;
  url = "";
  constructor(
    readonly name: string,
    readonly env: Record<string, string>,
  ) {}
  async start(): Promise<void> {
    const port = await freePort();
    this.proc = Bun.spawn([BUN, MAIN], {
      env: {
        ...process.env,
        LOG_LEVEL: process.env.LOG_LEVEL ?? "warn",
        HOST: "127.0.0.1",
        PORT: String(port),
        ...this.env,
      },
      stdout: "inherit",
      stderr: "inherit",
    });
    children.add(this.proc);
    const p = this.proc;
    await waitForPort(port, 60_000, "127.0.0.1", () => p.exitCode === null);
    this.url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 60_000;
    while (
      (await fetch(`${this.url}/readyz`).then(
        (r) => r.status,
        () => 0,
      )) !== 200
    ) {
      if (Date.now() > deadline) throw new Error(`${this.name} node not ready`);
      await Bun.sleep(100);
    }
  }
  async stop(): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGTERM");
    const t = setTimeout(() => this.proc?.kill("SIGKILL"), 15_000);
    await this.proc.exited;
    clearTimeout(t);
  }
}

/** One loadgen process; resolves with its result, calling onStart when its clock starts. */
async function runLoadgen(spec: LoadSpec, onStart: () => void): Promise<LoadResult & { pid: number }> {
  const proc = Bun.spawn([BUN, join(import.meta.dir, "loadgen.ts"), JSON.stringify(spec)], {
    stdout: "pipe",
    stderr: "inherit",
  });
  children.add(proc);
  let text = "";
  let started = false;
  const reader = proc.stdout.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    if (!started && text.includes('"started"')) {
      started = true;
      onStart();
    }
  }
  await proc.exited;
  children.delete(proc);
  const last = text.trim().split("\n").pop()!;
  return { ...(JSON.parse(last) as LoadResult), pid: proc.pid };
}

// ---------------------------------------------------------------- run

dir = mkdtempSync(join(tmpdir(), "tributary-capacity-"));
const pipelines = { ingest: join(dir, "pipelines-ingest"), pipeline: join(dir, "pipelines-pipeline") };
const connectionYaml = (connection: string, key: string, withPipeline: boolean) =>
  `connection: ${connection}\nsource: webhook\nwriteKeys: ["${key}"]\n` +
  (withPipeline ? `pipelines:\n  - name: all\n    import: events\n` : "");
for (const [which, d] of Object.entries(pipelines)) {
  mkdirSync(d);
  for (const [i, c] of CONNECTIONS.entries())
    writeFileSync(join(d, `${c}.yaml`), connectionYaml(c, KEYS[i]!, which === "pipeline"));
}

say(`starting ${O.replicas === 1 ? "nats-server" : `${O.replicas} clustered nats-servers`} and clickhouse-server`);
const routes = await Promise.all(Array.from({ length: O.replicas }, () => freePort()));
const natsServers: { server: LocalNats; name: string; monitor: number }[] = [];
for (let i = 0; i < O.replicas; i++) {
  const name = O.replicas === 1 ? "nats" : `n${i + 1}`;
  const monitor = await freePort();
  const server = await LocalNats.create({
    dataDir: join(dir, `nats-${i + 1}`),
    args: ["-m", String(monitor)],
    ...(O.replicas > 1 && { serverName: name, cluster: { name: "capacity", port: routes[i], routes } }),
  });
  natsServers.push({ server, name, monitor });
}
const ch = await LocalClickHouse.create({ dataDir: join(dir, "clickhouse") });
await Promise.all([...natsServers.map((s) => s.server.start()), ch.start()]);
const natsUrl = natsServers.map((s) => s.server.url).join(",");

const nodeEnv = (which: keyof typeof pipelines) => ({
  NATS_URL: natsUrl,
  CLICKHOUSE_URL: ch.url,
  TRIBUTARY_PIPELINES: pipelines[which],
  TRIBUTARY_STREAM_REPLICAS: String(O.replicas),
  TRIBUTARY_STREAM_PARTITIONS: String(O.partitions),
  TRIBUTARY_DATA: join(dir!, `node-${which}`),
});
const ingest = new Node("ingest", nodeEnv("ingest"));
const pipeline = new Node("pipeline", nodeEnv("pipeline"));
// The ingest node creates the streams (a cluster may need a moment to place 3 replicas).
await ingest.start();
await pipeline.start();
say(`nodes ready: ingest ${ingest.url}, pipeline ${pipeline.url}`);

const db = createClient({ url: ch.url, log: { level: ClickHouseLogLevel.OFF } });
const query = async <T>(q: string): Promise<T[]> =>
  (await (await db.query({ query: q, format: "JSONEachRow" })).json()) as T[];
const inConnections = `connection IN (${CONNECTIONS.map((c) => `'${c}'`).join(",")})`;
const loaded = async () =>
  Number((await query<{ c: string }>(`SELECT count() AS c FROM tributary.events WHERE ${inConnections}`))[0]!.c);
const nc = await connect({ servers: natsServers.map((s) => s.server.url) });
const jsm = await jetstreamManager(nc, { checkAPI: false });

const nats = new Component(
  O.replicas === 1 ? "NATS" : `NATS (${O.replicas} servers)`,
  `nats-server${O.replicas === 1 ? "" : ` ×${O.replicas}`}, ${O.partitions} stream(s) R${O.replicas}${O.replicas === 1 ? "" : ", summed"}`,
  () => new Map(natsServers.map((s) => [s.name, s.server.pid!])),
);
const components = [
  new Component(
    "ingest node",
    "HTTP, validation, JetStream publish (`bun src/main.ts` and children, no pipelines)",
    nodeMembers(() => ingest.proc?.pid),
  ),
  nats,
  new Component(
    "pipeline workers",
    "consume, rows, insert (`bun src/main.ts` and its pipeline worker processes, no HTTP traffic)",
    nodeMembers(() => pipeline.proc?.pid),
  ),
  new Component("ClickHouse", "clickhouse-server", () => new Map([["clickhouse", ch.pid!]])),
];

const url = new URL(ingest.url);
const spec = (tag: string, seconds: number): LoadSpec => ({
  host: url.hostname,
  port: Number(url.port),
  path: "/v1/events",
  keys: KEYS,
  keyPerRequest: true,
  mode: "open",
  connections: Math.max(8, O.connections),
  maxConnections: 256,
  eventsPerSecond: O.rate,
  seconds,
  batch: O.batch,
  tag,
  fixturesDir: O.fixtures,
});

async function drain(target: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const n = await loaded().catch(() => 0);
    if (n >= target || Date.now() > deadline) return n;
    await Bun.sleep(250);
  }
}

say(
  `warm-up: ${O.warmupSeconds} s at ${O.rate} events/s over ${O.connections} connection(s), ${O.partitions} stream(s)`,
);
const warm = await runLoadgen(spec("warm", O.warmupSeconds), () => {});
await drain(warm.accepted, 120_000);

const IDLE_SECONDS = 3;
for (const c of components) c.idleStart();
await Bun.sleep(IDLE_SECONDS * 1000);
for (const c of components) c.idleEnd(IDLE_SECONDS);

const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
const loadBefore = loadavg();
// ClickHouse's cost follows its inserts more than its rows: each pipeline flushes its own batches.
const inserts = async () =>
  Number(
    (
      await query<{ v: string }>(`SELECT sum(value) AS v FROM system.events WHERE event = 'InsertQuery'`).catch(
        () => [],
      )
    )[0]?.v ?? Number.NaN,
  );
const insertsBefore = await inserts();
const streamsBefore = await streamStates(jsm, layout.streams);
const varzBefore = await Promise.all(natsServers.map((s) => varz(s.monitor)));
const clientsBefore = await Promise.all(natsServers.map((s) => clientBytes(s.monitor)));
say(
  `measuring: ${O.seconds} s at ${O.rate} events/s, ${O.batch} events per request (load average ${loadBefore}); ` +
    `stream leaders ${streamsBefore.map((s) => `${s.name} ${s.leader || "-"}`).join(", ")}`,
);
let t0 = 0;
let maxLag = 0;
const poller = setInterval(() => {
  for (const c of components) c.poll();
}, 500);
// Every 2 s: listing consumers costs the servers a little, and 2 s is fine enough for a peak.
const lagPoller = setInterval(async () => {
  const c = await consumers(jsm, layout.streams).catch(() => undefined);
  if (c) maxLag = Math.max(maxLag, c.backlog);
}, 2000);
const run = await runLoadgen(spec("measure", O.seconds), () => {
  t0 = performance.now();
  for (const c of components) c.begin();
});
const loadEnd = performance.now();
const want = warm.accepted + run.accepted;
const have = await drain(want, 300_000);
const drainSeconds = (performance.now() - loadEnd) / 1000;
await Bun.sleep(O.settleSeconds * 1000);
clearInterval(poller);
clearInterval(lagPoller);
for (const c of components) c.end();
const window = (performance.now() - t0) / 1000;
const loadAfter = loadavg();
const chInserts = (await inserts()) - insertsBefore;
const streamsAfter = await streamStates(jsm, layout.streams);
const varzWindow = (await Promise.all(natsServers.map((s) => varz(s.monitor)))).map((v, i) =>
  varzDelta(varzBefore[i], v),
);
const clientsWindow = (await Promise.all(natsServers.map((s) => clientBytes(s.monitor)))).map((c, i) =>
  clientDelta(clientsBefore[i], c),
);

// ---------------------------------------------------------------- storage and verification

const writes = writesBetween(streamsBefore, streamsAfter);
const consumerLeaders = (await consumers(jsm, layout.streams)).leaders;
const storedBytes = streamsAfter.reduce((a, s) => a + s.bytes, 0);
const storedMessages = streamsAfter.reduce((a, s) => a + s.messages, 0);
const [distinct] = await query<{ u: string; c: string }>(
  `SELECT uniqExact(message_id) AS u, count() AS c FROM tributary.events WHERE ${inConnections}`,
);
const v = await verify(query, CONNECTIONS, connectionOf, O.batch, [warm, run]);
const [parts] = await query<{ b: string; r: string }>(
  `SELECT sum(bytes_on_disk) AS b, sum(rows) AS r FROM system.parts WHERE database = 'tributary' AND table = 'events' AND active`,
).catch(() => [{ b: "0", r: "0" }]);
const chBytesPerRow = Number(parts!.b) / Math.max(1, Number(parts!.r));
const fixtures = fixtureEvents(O.fixtures);
const eventJsonBytes = fixtures.reduce((a, e) => a + JSON.stringify(e).length, 0) / fixtures.length;
// The share the hash gives the largest stream when every connection gets the same load.
const shardsPer = layout.streams.map(() => 0);
for (const c of CONNECTIONS) for (let s = 0; s < DEDUP_SHARDS; s++) shardsPer[layout.partitionOf(c, s)]!++;
const expectedHighestShare = Math.max(...shardsPer) / (CONNECTIONS.length * DEDUP_SHARDS);

await Promise.all([ingest.stop(), pipeline.stop()]);
await nc.close();
await db.close();
await Promise.all([...natsServers.map((s) => s.server.stop()), ch.stop()]);

const ok = have >= want && v.answered2xx === want && v.missing === 0 && v.twice === 0 && v.misrouted === 0;
const out = report({
  o: O,
  run,
  components,
  nats,
  natsServers: natsServers.map((s, i) => ({ name: s.name, varz: varzWindow[i], clients: clientsWindow[i] })),
  writes,
  expectedHighestShare,
  shardsPerStream: shardsPer,
  consumerLeaders,
  window,
  drainSeconds,
  maxLag,
  loadAverage: [loadBefore, loadAfter],
  eventJsonBytes,
  streamBytesPerEvent: storedBytes / want,
  storedMessages,
  storedBytes,
  chBytesPerRow,
  chInserts,
  verification: v,
  distinct: { u: Number(distinct!.u), c: Number(distinct!.c) },
  want,
  ok,
});
console.log(out.markdown);
console.log(JSON.stringify(out.json));
process.exit(ok ? 0 : 1);
