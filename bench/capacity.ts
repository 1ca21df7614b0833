// `npm run bench:capacity`: what each component costs per event at a steady load, read from
// /proc during one run: CPU-seconds (utime + stime) and peak RSS per million events for the
// ingest node, NATS, the pipeline workers and ClickHouse, and events/s per core for each.
//
// It starts its own nats-server (or, with CAPACITY_REPLICAS=3, three clustered on loopback and
// the events stream on 3 replicas) and clickhouse-server (temporary data dirs, free ports), and
// two Tributary nodes (`bun src/main.ts`), split the way a deployment may split them:
//   ingest    serves HTTP; its connection has no pipelines, so it runs no pipeline worker
//   pipeline  the same connection with one `import: events` pipeline (no filter); no HTTP traffic
// The load generator (bench/loadgen.ts, its own process) posts CAPACITY_BATCH-event requests of
// the test/fixtures events (Segment track and identify, a curl track), every messageId unique, open
// loop at CAPACITY_RATE events/s: first CAPACITY_WARMUP_SECONDS (not measured, drained), then
// CAPACITY_SECONDS measured. The window runs from the measured load's first request until ClickHouse
// holds every accepted event, plus CAPACITY_SETTLE_SECONDS for the merges the inserts caused;
// each process's idle CPU over a few seconds before the load is reported beside it.
// At the end it checks that every accepted event is in `tributary.events FINAL` exactly once
// (request by request, from the loadgen's 2xx answers: none missing, none twice), reads the
// stream's bytes per stored event and ClickHouse's bytes on disk per row, and prints a markdown
// table and one JSON line. Exit 1 if the pipeline did not keep up or events went missing.
//
// Environment: CAPACITY_RATE (20000), CAPACITY_SECONDS (60), CAPACITY_WARMUP_SECONDS (5),
// CAPACITY_SETTLE_SECONDS (5), CAPACITY_BATCH (100), CAPACITY_REPLICAS (1; 3 runs a 3-server
// cluster), CAPACITY_FIXTURES (test/fixtures).
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
import { STREAM } from "../src/bus/subjects.ts";
import { fixtureEvents, type LoadResult, type LoadSpec } from "./loadgen.ts";
import { parseCommand } from "../scripts/cli.ts";

// Before anything starts: `--help` prints this and exits, an unknown flag exits 2.
parseCommand({
  name: "bench:capacity",
  options: {},
  usage: `usage: npm run bench:capacity

What each component (ingest node, NATS, pipeline workers, ClickHouse) costs per event at a steady
load: CPU-seconds and peak RSS per million events, events/s per core. Starts its own services and
two nodes; checks every accepted event is stored exactly once; prints a markdown table and one
JSON line. Exit 1 if the pipeline did not keep up or events went missing.

  -h, --help   this help

Environment: CAPACITY_RATE (20000), CAPACITY_SECONDS (60), CAPACITY_WARMUP_SECONDS (5),
CAPACITY_SETTLE_SECONDS (5), CAPACITY_BATCH (100), CAPACITY_REPLICAS (1; 3 runs a 3-server
cluster), CAPACITY_FIXTURES (test/fixtures).`,
});

const env = process.env;
const num = (name: string, d: number) => (env[name] ? Number(env[name]) : d);
const RATE = num("CAPACITY_RATE", 20_000);
const SECONDS = num("CAPACITY_SECONDS", 60);
const WARMUP_SECONDS = num("CAPACITY_WARMUP_SECONDS", 5);
const SETTLE_SECONDS = num("CAPACITY_SETTLE_SECONDS", 5);
const BATCH = num("CAPACITY_BATCH", 100);
const REPLICAS = num("CAPACITY_REPLICAS", 1);
const FIXTURES = resolve(env.CAPACITY_FIXTURES ?? join(import.meta.dir, "../test/fixtures"));
const BUN = process.execPath;
const MAIN = join(import.meta.dir, "../src/main.ts");
const CONNECTION = "capacity";
const KEY = "capacity-bench-write-key";
const CLK_TCK = 100; // Linux USER_HZ: /proc times are in 1/100 s on every mainstream kernel
const MiB = 2 ** 20;

const children = new Set<Subprocess>();
let dir: string | undefined;
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  ManagedProcess.killAllSync();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
for (const s of ["SIGINT", "SIGTERM"] as const) process.on(s, () => process.exit(130));
const say = (s: string) => process.stderr.write(`[capacity] ${s}\n`);

// ---------------------------------------------------------------- /proc

interface ProcSample {
  /** utime + stime, seconds. */
  cpu: number;
  rss: number;
  hwm: number;
}

function sample(pid: number): ProcSample {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0) * 1024;
  // f[0] is field 3 (state): utime is field 14, stime field 15.
  return { cpu: (Number(f[11]) + Number(f[12])) / CLK_TCK, rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/** A component is one or more processes (the NATS cluster is three). */
class Component {
  #start: ProcSample[] = [];
  #idle0: ProcSample[] = [];
  idleCores = 0;
  cpu = 0;
  /** Highest sampled VmRSS summed over the processes during the window, and the VmHWM sum at its end. */
  peakRss = 0;
  hwm = 0;
  /** CPU-seconds of each process, when there are several. */
  perProcess: number[] = [];
  constructor(
    readonly name: string,
    readonly what: string,
    readonly pids: () => number[],
  ) {}
  #all = () => this.pids().map(sample);
  idleStart() {
    this.#idle0 = this.#all();
  }
  idleEnd(seconds: number) {
    const now = this.#all();
    this.idleCores = now.reduce((a, s, i) => a + s.cpu - this.#idle0[i]!.cpu, 0) / seconds;
  }
  begin() {
    this.#start = this.#all();
    this.peakRss = this.#start.reduce((a, s) => a + s.rss, 0);
  }
  poll() {
    this.peakRss = Math.max(
      this.peakRss,
      this.#all().reduce((a, s) => a + s.rss, 0),
    );
  }
  end() {
    const now = this.#all();
    this.perProcess = now.map((s, i) => s.cpu - this.#start[i]!.cpu);
    this.cpu = this.perProcess.reduce((a, x) => a + x, 0);
    this.hwm = now.reduce((a, s) => a + s.hwm, 0);
    this.poll();
  }
}

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
      env: { ...env, LOG_LEVEL: env.LOG_LEVEL ?? "warn", HOST: "127.0.0.1", PORT: String(port), ...this.env },
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
const connectionYaml = (withPipeline: boolean) =>
  `connection: ${CONNECTION}\nsource: webhook\nwriteKeys: ["${KEY}"]\n` +
  (withPipeline ? `pipelines:\n  - name: all\n    import: events\n` : "");
mkdirSync(pipelines.ingest);
mkdirSync(pipelines.pipeline);
writeFileSync(join(pipelines.ingest, "capacity.yaml"), connectionYaml(false));
writeFileSync(join(pipelines.pipeline, "capacity.yaml"), connectionYaml(true));

say(`starting ${REPLICAS === 1 ? "nats-server" : `${REPLICAS} clustered nats-servers`} and clickhouse-server`);
const natsServers: LocalNats[] = [];
if (REPLICAS === 1) {
  natsServers.push(await LocalNats.create({ dataDir: join(dir, "nats") }));
} else {
  const routes = await Promise.all(Array.from({ length: REPLICAS }, () => freePort()));
  for (let i = 0; i < REPLICAS; i++) {
    natsServers.push(
      await LocalNats.create({
        dataDir: join(dir, `nats-${i + 1}`),
        serverName: `n${i + 1}`,
        cluster: { name: "capacity", port: routes[i], routes },
      }),
    );
  }
}
const ch = await LocalClickHouse.create({ dataDir: join(dir, "clickhouse") });
await Promise.all([...natsServers.map((s) => s.start()), ch.start()]);
const natsUrl = natsServers.map((s) => s.url).join(",");

const nodeEnv = (pipelinesDir: string) => ({
  NATS_URL: natsUrl,
  CLICKHOUSE_URL: ch.url,
  TRIBUTARY_PIPELINES: pipelinesDir,
  TRIBUTARY_STREAM_REPLICAS: String(REPLICAS),
  TRIBUTARY_DATA: join(dir!, "node"),
});
const ingest = new Node("ingest", nodeEnv(pipelines.ingest));
const pipeline = new Node("pipeline", nodeEnv(pipelines.pipeline));
// The ingest node creates the stream (a cluster may need a moment to place 3 replicas).
await ingest.start();
await pipeline.start();
say(`nodes ready: ingest ${ingest.url}, pipeline ${pipeline.url}`);

const db = createClient({ url: ch.url, log: { level: ClickHouseLogLevel.OFF } });
const query = async <T>(q: string): Promise<T[]> =>
  (await (await db.query({ query: q, format: "JSONEachRow" })).json()) as T[];
const loaded = async () =>
  Number(
    (await query<{ c: string }>(`SELECT count() AS c FROM tributary.events WHERE connection = '${CONNECTION}'`))[0]!.c,
  );
const nc = await connect({ servers: natsServers.map((s) => s.url) });
const jsm = await jetstreamManager(nc, { checkAPI: false });

const components = [
  new Component("ingest node", "HTTP, validation, JetStream publish (`bun src/main.ts`, no pipelines)", () => [
    ingest.proc!.pid,
  ]),
  new Component(
    REPLICAS === 1 ? "NATS" : `NATS (${REPLICAS} servers)`,
    REPLICAS === 1 ? "nats-server, stream R1" : `nats-server ×${REPLICAS}, stream R${REPLICAS}, summed`,
    () => natsServers.map((s) => s.pid!),
  ),
  new Component("pipeline workers", "consume, rows, insert (`bun src/main.ts`, no HTTP traffic)", () => [
    pipeline.proc!.pid,
  ]),
  new Component("ClickHouse", "clickhouse-server", () => [ch.pid!]),
];

const url = new URL(ingest.url);
const spec = (tag: string, seconds: number): LoadSpec => ({
  host: url.hostname,
  port: Number(url.port),
  path: "/v1/events",
  keys: [KEY],
  mode: "open",
  connections: 8,
  maxConnections: 256,
  eventsPerSecond: RATE,
  seconds,
  batch: BATCH,
  tag,
  fixturesDir: FIXTURES,
});

async function drain(target: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const n = await loaded().catch(() => 0);
    if (n >= target || Date.now() > deadline) return n;
    await Bun.sleep(250);
  }
}

say(`warm-up: ${WARMUP_SECONDS} s at ${RATE} events/s`);
const warm = await runLoadgen(spec("warm", WARMUP_SECONDS), () => {});
await drain(warm.accepted, 120_000);

const IDLE_SECONDS = 3;
for (const c of components) c.idleStart();
await Bun.sleep(IDLE_SECONDS * 1000);
for (const c of components) c.idleEnd(IDLE_SECONDS);

const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
const loadBefore = loadavg();
say(`measuring: ${SECONDS} s at ${RATE} events/s, ${BATCH} events per request (load average ${loadBefore})`);
let t0 = 0;
let maxLag = 0;
const poller = setInterval(() => {
  for (const c of components) c.poll();
}, 500);
const lagPoller = setInterval(async () => {
  const info = await jsm.consumers.info(STREAM, `tributary_${CONNECTION}_all`).catch(() => undefined);
  if (info) maxLag = Math.max(maxLag, info.num_pending + info.num_ack_pending);
}, 1000);
const run = await runLoadgen(spec("measure", SECONDS), () => {
  t0 = performance.now();
  for (const c of components) c.begin();
});
const loadEnd = performance.now();
const want = warm.accepted + run.accepted;
const have = await drain(want, 300_000);
const drainSeconds = (performance.now() - loadEnd) / 1000;
await Bun.sleep(SETTLE_SECONDS * 1000);
clearInterval(poller);
clearInterval(lagPoller);
for (const c of components) c.end();
const window = (performance.now() - t0) / 1000;
const loadAfter = loadavg();

// ---------------------------------------------------------------- storage and verification

const streamInfo = await jsm.streams.info(STREAM);
const leader = streamInfo.cluster?.leader;
const streamBytesPerEvent = streamInfo.state.bytes / want;
const [distinct] = await query<{ u: string; c: string }>(
  `SELECT uniqExact(message_id) AS u, count() AS c FROM tributary.events WHERE connection = '${CONNECTION}'`,
);
// Exactly once, as queries see it (FINAL), per request: every event of every request answered 2xx
// is there once, and no messageId is there twice (uniqExact alone would let duplicates pass).
// messageIds are b-<tag>-<request number>-<index>; one row per request keeps the answer small.
const perRequest = await query<{ tag: string; req: string; n: string; u: string }>(
  `SELECT splitByChar('-', message_id)[2] AS tag, toUInt64(splitByChar('-', message_id)[3]) AS req, count() AS n, uniqExact(message_id) AS u
   FROM tributary.events FINAL WHERE connection = '${CONNECTION}' GROUP BY tag, req`,
);
const stored = new Map(perRequest.map((r) => [`${r.tag}/${Number(r.req)}`, { n: Number(r.n), u: Number(r.u) }]));
let missing = 0;
let twice = 0;
let extra = 0;
const okKeys = new Set<string>();
for (const r of [warm, run]) {
  for (const req of r.okRequests) {
    const key = `${r.tag}/${req}`;
    okKeys.add(key);
    missing += BATCH - (stored.get(key)?.u ?? 0);
  }
}
for (const [key, x] of stored) {
  twice += x.n - x.u;
  if (!okKeys.has(key)) extra += x.u; // answered non-2xx (or unanswered) but stored: allowed
}
const answered2xx = [warm, run].reduce((a, r) => a + r.okRequests.length * BATCH, 0);
const [parts] = await query<{ b: string; r: string }>(
  `SELECT sum(bytes_on_disk) AS b, sum(rows) AS r FROM system.parts WHERE database = 'tributary' AND table = 'events' AND active`,
).catch(() => [{ b: "0", r: "0" }]);
const chBytesPerRow = Number(parts!.b) / Math.max(1, Number(parts!.r));
const fixtures = fixtureEvents(FIXTURES);
const eventJsonBytes = fixtures.reduce((a, e) => a + JSON.stringify(e).length, 0) / fixtures.length;

await Promise.all([ingest.stop(), pipeline.stop()]);
await nc.close();
await db.close();
await Promise.all([...natsServers.map((s) => s.stop()), ch.stop()]);

// ---------------------------------------------------------------- report

const events = run.accepted;
const f = (n: number, d = 0) =>
  (n ?? NaN).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
const lines: string[] = [];
lines.push(
  `Steady load: ${f(RATE)} events/s offered for ${SECONDS} s (${BATCH} events per request, open loop), ${f(events)} accepted ` +
    `(${f(run.eventsPerSecond)} events/s, p50 ${f(run.p50, 1)} ms, p99 ${f(run.p99, 1)} ms); ` +
    `window ${f(window, 1)} s = load + ${f(drainSeconds, 1)} s until ClickHouse had them all + ${SETTLE_SECONDS} s settle; ` +
    `pipeline backlog peaked at ${f(maxLag)} messages. Events average ${f(eventJsonBytes)} bytes of JSON. Stream replicas: ${REPLICAS}. ` +
    `Machine: ${navigator.hardwareConcurrency} cores, load average ${loadBefore} before and ${loadAfter} after (other work on the machine shows here).`,
);
lines.push("");
lines.push(
  "| component | process | CPU-s in window | CPU-s per 1M events | events/s per core | idle cores | peak RSS MiB (window) | VmHWM MiB |",
);
lines.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const c of components) {
  const perM = (c.cpu / events) * 1e6;
  lines.push(
    `| ${c.name} | ${c.what} | ${f(c.cpu, 1)} | ${f(perM, 1)} | ${f(events / c.cpu)} | ${f(c.idleCores, 3)} | ${f(c.peakRss / MiB)} | ${f(c.hwm / MiB)} |`,
  );
}
const total = components.reduce((a, c) => a + c.cpu, 0);
lines.push(`| all four | | ${f(total, 1)} | ${f((total / events) * 1e6, 1)} | ${f(events / total)} | | | |`);
lines.push(
  `| (load generator) | bench/loadgen.ts | ${f(run.cpuSeconds, 1)} | ${f((run.cpuSeconds / events) * 1e6, 1)} | | | | |`,
);
if (REPLICAS > 1) {
  const nats = components[1]!;
  lines.push("");
  lines.push(
    `NATS per server (stream leader at the end: ${leader}): ` +
      natsServers
        .map((srv, i) => `${srv.serverName} ${f(((nats.perProcess[i] ?? 0) / events) * 1e6, 1)} CPU-s per 1M events`)
        .join(", ") +
      ".",
  );
}
lines.push("");
lines.push(
  `Storage: ${f(streamBytesPerEvent)} bytes per event in the stream (per replica; ${f(streamInfo.state.messages)} messages, ${f(streamInfo.state.bytes / MiB, 1)} MiB), ` +
    `so one hour of ClickHouse outage at 1,000 events/s needs ${f((streamBytesPerEvent * 1000 * 3600) / 2 ** 30, 2)} GiB of stream per replica; ` +
    `ClickHouse keeps ${f(chBytesPerRow)} bytes per row on disk (compressed, after merges so far; the fixtures repeat three events, so real data compresses far less).`,
);
const ok = have >= want && answered2xx === want && missing === 0 && twice === 0;
lines.push(
  `Verification (tributary.events FINAL, request by request): ${f(want)} events answered 2xx (warm-up included), ${f(missing)} missing, ${f(twice)} stored twice` +
    `${extra ? `, ${f(extra)} stored though not answered 2xx (allowed)` : ""}; ${f(Number(distinct!.u))} distinct messageIds, ${f(Number(distinct!.c))} rows before FINAL: ` +
    `${ok ? "every accepted event is there exactly once" : answered2xx !== want ? "the 2xx answers do not add up (loadgen bug)" : "NOT EXACTLY ONCE"}.`,
);
console.log(lines.join("\n"));
console.log(
  JSON.stringify({
    rate: RATE,
    seconds: SECONDS,
    batch: BATCH,
    replicas: REPLICAS,
    accepted: events,
    eventsPerSecond: run.eventsPerSecond,
    p50: run.p50,
    p99: run.p99,
    window,
    drainSeconds,
    maxLag,
    eventJsonBytes,
    streamBytesPerEvent,
    chBytesPerRow,
    streamLeader: leader,
    components: components.map((c) => ({
      name: c.name,
      perProcessCpuSeconds: c.perProcess,
      cpuSeconds: c.cpu,
      cpuSecondsPerMillion: (c.cpu / events) * 1e6,
      eventsPerSecondPerCore: events / c.cpu,
      idleCores: c.idleCores,
      peakRssMiB: c.peakRss / MiB,
      hwmMiB: c.hwm / MiB,
    })),
    loadgenCpuSeconds: run.cpuSeconds,
    cores: navigator.hardwareConcurrency,
    loadAverage: [loadBefore, loadAfter],
    verified: ok,
    missing,
    storedTwice: twice,
    extra,
  }),
);
process.exit(ok ? 0 : 1);
