// `npm run bench:e2e`: events POSTed at a node until they are counted in ClickHouse, beside the
// raw speed of inserting the same rows straight into the same ClickHouse (the sink's ceiling),
// in the same run, so a noisy machine shows up in ratios rather than as a moving baseline.
//
// It starts its own nats-server and clickhouse-server (temporary data dirs, free ports) and a
// pipelines dir with one webhook connection (one write key) and one `import: events` pipeline
// without a filter. Nodes and the load generator (bench/loadgen.ts) run in their own processes.
//   1. raw     the rows the sink would make (eventRow() of normalised events from the fixture,
//              unique messageIds) inserted by the sink's Inserter (JSONEachRow through fetch) into a copy
//              of the events table, one insert at a time, in batches of the size the sink's row and
//              byte limits give; half of E2E_RAW_SECONDS here, half after phase 3
//   2. warm    a node (bench/e2e-node.ts) under a short closed loop, drained
//   3. max     closed loop: events landing in ClickHouse (row count polled from part metadata)
//              between the first and last insert of the steady part of the load; the ingest rate,
//              backlog and drain time beside it
//   4. half    open loop at half of phase 3's landed rate: receipt-to-queryable of every event, from
//              its received_at (the node's clock at receipt) to the first poll that counted it
//   4b. open   open loop at E2E_OPEN_RATE (5,000) events/s for E2E_OPEN_SECONDS (10): a sender's p99
//   5. sink    an ingest-only node builds a JetStream backlog, then a full node drains it with no
//              HTTP load: the pipeline's own speed against the raw ceiling
//   6. verify  nodes stopped gracefully; every event answered 2xx is in ClickHouse exactly once
// It prints a markdown table with PASS/FAIL per target and exits 0 whatever the numbers; it exits 1
// when events were lost or duplicated, a pipeline failed rows, or the run broke.
//
// Environment: E2E_RAW_SECONDS (16), E2E_SECONDS (15) for max, E2E_HALF_SECONDS (15),
// E2E_DRAIN_SECONDS (8) of load building the backlog, E2E_CONNECTIONS (4) closed-loop senders,
// E2E_BATCH (100) events per request, E2E_RAW_BATCH (rows per raw insert; default what the node's
// limits give for these events), E2E_POLL_MS (100) latency poll period, E2E_FIXTURE
// (/work/shared/fixtures/segment-track.json, else test/fixtures/segment-track.json), E2E_SPLIT=1
// (ingest and pipeline in two node processes), E2E_CPU_PROF (a directory: profile the nodes there).
// TRIBUTARY_BATCH_MAX_ROWS / _BYTES / _AGE_MS reach the nodes as usual and size the raw batches too.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { LocalNats } from "../src/services/nats-server.ts";
import { LocalClickHouse } from "../src/services/clickhouse-server.ts";
import { ManagedProcess } from "../src/services/managed-process.ts";
import { warehouseOptionsOf, connectWarehouse, quoteString, type Warehouse } from "../src/sink/clickhouse/server.ts";
import { eventRow, eventsTableDDL } from "../src/sink/clickhouse/events-table.ts";
import { Inserter } from "../src/sink/clickhouse/inserter.ts";
import { normaliseEvent } from "../src/ingest/normalise.ts";
import type { Event } from "../src/ingest/event-schema.ts";
import { optionsFromEnv } from "../src/config/env.ts";
import type { LoadResult, LoadSpec } from "./loadgen.ts";
import { parseCommand } from "../scripts/cli.ts";

// Before anything starts: `--help` prints this and exits, an unknown flag exits 2.
parseCommand({
  name: "bench:e2e",
  options: {},
  usage: `usage: npm run bench:e2e

Events POSTed at a node until they are counted in ClickHouse, beside the raw speed of inserting
the same rows straight into the same ClickHouse. Starts its own nats-server, clickhouse-server
and nodes; prints a markdown table with PASS/FAIL per target and one JSON line. Exit 1 when
events were lost or duplicated, a pipeline failed rows, or the run broke.

  -h, --help   this help

Environment: E2E_RAW_SECONDS (16), E2E_SECONDS (15), E2E_HALF_SECONDS (15), E2E_DRAIN_SECONDS (8),
E2E_CONNECTIONS (4), E2E_BATCH (100), E2E_RAW_BATCH, E2E_POLL_MS (100), E2E_FIXTURE, E2E_SPLIT=1
(ingest and pipeline in two node processes), E2E_CPU_PROF (a directory: profile the nodes there).`,
});

const env = process.env;
const num = (name: string, d: number) => (env[name] ? Number(env[name]) : d);
const RAW_SECONDS = num("E2E_RAW_SECONDS", 16);
const SECONDS = num("E2E_SECONDS", 15);
const HALF_SECONDS = num("E2E_HALF_SECONDS", 15);
const OPEN_RATE = num("E2E_OPEN_RATE", 5000);
const OPEN_SECONDS = num("E2E_OPEN_SECONDS", 10);
const CONNECTIONS = num("E2E_CONNECTIONS", 4);
const BATCH = num("E2E_BATCH", 100);
const POLL_MS = num("E2E_POLL_MS", 100);
const WARM_SECONDS = Math.min(3, SECONDS);
const FIXTURE = resolve(
  env.E2E_FIXTURE ??
    (existsSync("/work/shared/fixtures/segment-track.json")
      ? "/work/shared/fixtures/segment-track.json"
      : join(import.meta.dir, "../test/fixtures/segment-track.json")),
);
const CPU_PROF = env.E2E_CPU_PROF ? resolve(env.E2E_CPU_PROF) : undefined;
const DRAIN_SECONDS = num("E2E_DRAIN_SECONDS", 8);
const SPLIT = /^(1|true|yes)$/i.test(env.E2E_SPLIT ?? "");
const NODE_OPTS = optionsFromEnv();
const BUN = process.execPath;
const CONNECTION = "bench";
const PIPELINE = "all";
const KEY = "bench-e2e-write-key";
const DB = NODE_OPTS.database;

const children = new Set<Subprocess>();
/** The run's temporary directory, removed on any exit (Ctrl-C included). */
let tempDir: string | undefined;
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  ManagedProcess.killAllSync();
  if (tempDir) rmSync(tempDir, { recursive: true, force: true });
});
for (const s of ["SIGINT", "SIGTERM"] as const) process.on(s, () => process.exit(130));
const say = (s: string) => process.stderr.write(`[e2e] ${s}\n`);
const now = () => performance.now();

// ---------------------------------------------------------------- CPU accounting (/proc)

const CLK_TCK = 100;
/** User + system CPU seconds of a process (or, with `thread`, of its main thread only). */
function cpuOf(pid: number | undefined, thread = false): number {
  if (!pid) return 0;
  try {
    const stat = readFileSync(thread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}
/** A process and every process it started (the node's pipeline workers and sandboxes), at this moment. */
function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const tid of readdirSync(`/proc/${out[i]}/task`))
        for (const c of readFileSync(`/proc/${out[i]}/task/${tid}/children`, "utf8").trim().split(/\s+/))
          if (c) out.push(Number(c));
    } catch {}
  }
  return out;
}
function machineCpu(): { busy: number; total: number } {
  const f = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, n) => a + n, 0);
  return { busy: (total - f[3]! - f[4]!) / CLK_TCK, total: total / CLK_TCK };
}

/**
 * Cores used by each process over a span. `node` is each node's process tree (its pipeline worker
 * processes included); `nodeJs` is the node's main thread, the one answering HTTP (at most 1 per
 * node); `pipelines` is the worker processes' share of `node`.
 */
type Cpu = Record<"node" | "nodeJs" | "pipelines" | "nats" | "clickhouse" | "loadgen" | "bench" | "other", number>;
/** Starts a CPU meter over the processes we know; `stop(loadgenSeconds)` gives cores used by each. */
function cpuMeter(): { stop(loadgenCpuSeconds?: number): Cpu } {
  const sum = (f: (pid: number) => number) => nodes.reduce((a, n) => a + f(n.proc.pid), 0);
  const tree = (p: number) => processTree(p).reduce((a, q) => a + cpuOf(q), 0);
  const pids = () => ({
    node: sum(tree),
    pipelines: sum((p) => tree(p) - cpuOf(p)),
    nodeJs: sum((p) => cpuOf(p, true)),
    nats: cpuOf(nats.pid),
    clickhouse: cpuOf(ch.pid),
  });
  const p0 = pids();
  const b0 = process.cpuUsage();
  const m0 = machineCpu();
  return {
    stop(loadgen = 0) {
      const p1 = pids();
      const b = process.cpuUsage(b0);
      const m1 = machineCpu();
      const span = (m1.total - m0.total) / navigator.hardwareConcurrency;
      const cpu: Cpu = {
        node: (p1.node - p0.node) / span,
        nodeJs: (p1.nodeJs - p0.nodeJs) / span,
        pipelines: (p1.pipelines - p0.pipelines) / span,
        nats: (p1.nats - p0.nats) / span,
        clickhouse: (p1.clickhouse - p0.clickhouse) / span,
        loadgen: loadgen / span,
        bench: (b.user + b.system) / 1e6 / span,
        other: 0,
      };
      cpu.other = Math.max(
        0,
        (m1.busy - m0.busy) / span - cpu.node - cpu.nats - cpu.clickhouse - cpu.loadgen - cpu.bench,
      );
      return cpu;
    },
  };
}

// ---------------------------------------------------------------- node and load generator

interface NodeProc {
  proc: Subprocess<"ignore", "pipe", "inherit">;
  port: number;
  ask(m: string): Promise<any>;
}

async function spawnNode(extraEnv: Record<string, string | undefined>, bunArgs: string[]): Promise<NodeProc> {
  const answers: ((m: unknown) => void)[] = [];
  const proc = Bun.spawn([BUN, ...bunArgs, join(import.meta.dir, "e2e-node.ts")], {
    env: { ...env, LOG_LEVEL: env.LOG_LEVEL ?? "warn", ...extraEnv },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "inherit",
    ipc: (m) => answers.shift()?.(m),
  });
  children.add(proc);
  void proc.exited.then(() => children.delete(proc));
  const reader = proc.stdout.getReader();
  let text = "";
  const startup = setTimeout(() => proc.kill("SIGKILL"), 90_000);
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the node exited (or did not start within 90 s) before its pipelines ran");
    text += new TextDecoder().decode(value);
  }
  clearTimeout(startup);
  reader.releaseLock();
  const port = (JSON.parse(text.slice(0, text.indexOf("\n"))) as { port: number }).port;
  return {
    proc,
    port,
    ask: (m) =>
      new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error(`the node did not answer "${m}"`)), 30_000);
        answers.push((a) => {
          clearTimeout(t);
          res(a);
        });
        proc.send(m);
      }),
  };
}

/** A graceful stop (the node flushes its batches), SIGKILL if it takes over 20 s. */
async function stopNode(n: NodeProc): Promise<void> {
  await n.ask("stop").catch(() => {});
  const kill = setTimeout(() => n.proc.kill("SIGKILL"), 20_000);
  await n.proc.exited;
  clearTimeout(kill);
}

/** Runs the load generator; `onStart` runs when its clock starts. CPU is metered over its timed span. */
async function load(
  tag: string,
  mode: "closed" | "open",
  o: { seconds: number; eventsPerSecond?: number },
  onStart: () => void = () => {},
): Promise<{ r: LoadResult; cpu: Cpu; t0: number; t1: number }> {
  const spec: LoadSpec = {
    host: "127.0.0.1",
    port: nodes[0]!.port,
    path: "/v1/events",
    keys: [KEY],
    mode,
    connections: CONNECTIONS,
    maxConnections: 256,
    eventsPerSecond: o.eventsPerSecond,
    seconds: o.seconds,
    batch: BATCH,
    tag,
    fixturesDir: fixturesDir,
  };
  const p = Bun.spawn([BUN, join(import.meta.dir, "loadgen.ts"), JSON.stringify(spec)], {
    stdout: "pipe",
    stderr: "inherit",
    stdin: "ignore",
  });
  children.add(p);
  const kill = setTimeout(() => p.kill("SIGKILL"), spec.seconds * 1000 + 90_000);
  let meter: ReturnType<typeof cpuMeter> | undefined;
  let cpu: Cpu | undefined;
  let r: LoadResult | undefined;
  let t0 = 0;
  let t1 = 0;
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const chunk of p.stdout) {
    buffered += decoder.decode(chunk);
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      const line = JSON.parse(buffered.slice(0, nl)) as LoadResult & { started?: true };
      buffered = buffered.slice(nl + 1);
      if (line.started) {
        t0 = now();
        meter = cpuMeter();
        onStart();
      } else {
        t1 = now();
        r = line;
        cpu = meter?.stop(line.cpuSeconds);
      }
    }
  }
  clearTimeout(kill);
  children.delete(p);
  if ((await p.exited) !== 0 || !r || !cpu) throw new Error(`load generator failed (${tag})`);
  const bad = Object.keys(r.statuses).filter((s) => !s.startsWith("2"));
  if (bad.length || r.errors) say(`${tag}: answers ${JSON.stringify(r.statuses)}, ${r.errors} without answer`);
  return { r, cpu, t0, t1 };
}

// ---------------------------------------------------------------- ClickHouse queries

async function rows<T>(query: string): Promise<T[]> {
  return (await (await wh.client.query({ query, format: "JSONEachRow" })).json()) as T[];
}
const table = () => `${DB}.events`;
/** Rows in the events table, from the active parts' metadata: no column is read, so polling it costs ClickHouse nothing. */
async function countRows(): Promise<number> {
  const [r] = await rows<{ n: string }>(
    `SELECT sum(rows) AS n FROM system.parts WHERE database = ${quoteString(DB)} AND table = 'events' AND active`,
  );
  return Number(r?.n ?? 0);
}
/** Cumulative InsertQuery / InsertedRows of the server: rows per insert over a span. */
async function insertCounters(): Promise<{ inserts: number; rows: number }> {
  const rs = await rows<{ event: string; value: string }>(
    `SELECT event, value FROM system.events WHERE event IN ('InsertQuery', 'InsertedRows')`,
  );
  const get = (e: string) => Number(rs.find((r) => r.event === e)?.value ?? 0);
  return { inserts: get("InsertQuery"), rows: get("InsertedRows") };
}

/** Polls the row count until it reaches `expected` (or `timeoutMs` passes); the samples and when it got there. */
async function drain(
  expected: number,
  timeoutMs: number,
  samples: [number, number][] = [],
): Promise<{ doneAt?: number; samples: [number, number][] }> {
  const until = now() + timeoutMs;
  while (now() < until) {
    const t = now();
    const n = await countRows();
    samples.push([t, n]);
    if (n >= expected) return { doneAt: t, samples };
    await Bun.sleep(100);
  }
  return { samples };
}

/** Landed rows/s between the first and the last count change inside [from, to] (batch landings). */
function landedRate(
  samples: [number, number][],
  from: number,
  to: number,
): { rate: number; rows: number; seconds: number } {
  const changes: [number, number][] = [];
  for (let i = 1; i < samples.length; i++)
    if (samples[i]![1] !== samples[i - 1]![1] && samples[i]![0] >= from && samples[i]![0] <= to)
      changes.push(samples[i]!);
  if (changes.length < 2) return { rate: NaN, rows: 0, seconds: 0 };
  const [a, b] = [changes[0]!, changes[changes.length - 1]!];
  return { rate: (b[1] - a[1]) / ((b[0] - a[0]) / 1000), rows: b[1] - a[1], seconds: (b[0] - a[0]) / 1000 };
}

// ---------------------------------------------------------------- run

const dir = (tempDir = mkdtempSync(join(tmpdir(), "tributary-e2e-")));
const fixturesDir = join(dir, "fixtures");
mkdirSync(fixturesDir);
copyFileSync(FIXTURE, join(fixturesDir, "event.json"));
const pipelines = join(dir, "pipelines");
mkdirSync(pipelines);
writeFileSync(
  join(pipelines, "bench.yaml"),
  `connection: ${CONNECTION}\nsource: webhook\nwriteKeys: [${JSON.stringify(KEY)}]\npipelines:\n  - name: ${PIPELINE}\n    import: events\n`,
);

const nats = await LocalNats.create({ dataDir: join(dir, "nats") });
const ch = await LocalClickHouse.create({ dataDir: join(dir, "clickhouse") });
/** The node taking the load first; with E2E_SPLIT a second one runs the pipelines. */
const nodes: NodeProc[] = [];
let wh!: Warehouse;

interface RawRun {
  inserts: number;
  rows: number;
  seconds: number;
  insertMs: number[];
  cpu: Cpu;
}
interface Raw {
  batch: number;
  eventBytes: number;
  runs: RawRun[];
  rowsPerSecond: number;
  p50InsertMs: number;
  maxInsertMs: number;
  cpu: Cpu;
}
interface Max {
  r: LoadResult;
  cpu: Cpu;
  landed: ReturnType<typeof landedRate>;
  backlogAtEnd: number;
  drainSeconds: number;
  overall: number;
  rowsPerInsert: number;
  /** From the first POST until the last event was counted. */
  wholeCpu: Cpu;
}
interface Half {
  r: LoadResult;
  cpu: Cpu;
  offered: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  measured: number;
  pollMs: number;
}
let raw: Raw | undefined;
let max: Max | undefined;
let half: Half | undefined;
let open: { r: LoadResult; cpu: Cpu } | undefined;
let sink:
  | {
      events: number;
      ingestRate: number;
      /** The ingest-only node's CPU over the load that built the backlog: HTTP without a pipeline. */
      ingestCpu: Cpu;
      landed: ReturnType<typeof landedRate>;
      beforeReady: number;
      startSeconds: number;
      cpu: Cpu;
    }
  | undefined;
let verify:
  | {
      accepted: Record<string, number>;
      counted: Record<string, number>;
      total: number;
      unique: number;
      final: number;
      ok: boolean;
      stats?: any;
      slowConsumers: number;
    }
  | undefined;
let failure: unknown;
const started = now();

/** Waits (at most `ms`) until ClickHouse runs no merges, so one phase's background work does not land in the next. */
async function mergesSettled(ms: number): Promise<void> {
  const until = now() + ms;
  while (now() < until) {
    const [r] = await rows<{ n: string }>(`SELECT count() AS n FROM system.merges`);
    if (Number(r?.n) === 0) return;
    await Bun.sleep(200);
  }
}

try {
  say(`starting nats-server and clickhouse-server in ${dir}`);
  await Promise.all([nats.start(), ch.start()]);
  wh = await connectWarehouse(warehouseOptionsOf({ ...NODE_OPTS, clickhouseUrl: ch.url, database: DB }));
  const features = wh.features;
  say(`ClickHouse ${features.version}`);

  // ---------------- raw insert ceiling: half of it before the node runs, half after the max phase
  const fixture = JSON.parse(readFileSync(FIXTURE, "utf8")) as Event;
  const receivedAt = Date.now();
  const facts = { receivedAt, receivedAtIso: new Date(receivedAt).toISOString(), ip: "127.0.0.1" };
  // An event as the node stores it (same id length as the load generator's), and its size in the stream.
  const sample = normaliseEvent({ ...fixture, messageId: `b-max-0000000000-00` }, facts);
  const eventBytes = JSON.stringify(sample).length + 1;
  const rawBatch = num(
    "E2E_RAW_BATCH",
    Math.min(NODE_OPTS.batchMaxRows, Math.ceil(NODE_OPTS.batchMaxBytes / eventBytes)),
  );
  const ceilingTable = `${DB}.events_ceiling`;
  const ddl = eventsTableDDL(DB, features).replace(/\.events \(/, ".events_ceiling (");
  if (!ddl.includes("events_ceiling")) throw new Error("could not derive the ceiling table's DDL");
  // The rows the sink would make of these events; each insert gives them fresh messageIds.
  const batchRows = Array.from({ length: rawBatch }, (_, i) =>
    eventRow(
      normaliseEvent({ ...fixture, messageId: `r-0000000000-${i}` }, facts) as Record<string, unknown>,
      CONNECTION,
      PIPELINE,
      features,
    ),
  );
  // The sink's own insert call (JSONEachRow through Bun's fetch, its format and settings) straight on those rows:
  // whatever the sink's encoding becomes, the ceiling follows it.
  const inserter = new Inserter(wh, "events_ceiling");
  const rawRuns: RawRun[] = [];
  let rawInsertNo = 0;
  const rawPhase = async (seconds: number) => {
    await wh.client.command({ query: ddl });
    // One untimed insert first: connection set-up and JIT.
    await inserter.insert(batchRows.slice(0, 1000));
    const meter = cpuMeter();
    const t0 = now();
    const insertMs: number[] = [];
    let n = 0;
    while (now() - t0 < seconds * 1000) {
      n++;
      const id = String(++rawInsertNo).padStart(10, "0");
      for (let i = 0; i < batchRows.length; i++) batchRows[i]!.message_id = `r-${id}-${i}`;
      const s = now();
      const outcome = await inserter.insert(batchRows);
      if (outcome.inserted !== batchRows.length)
        throw new Error(`raw phase: ClickHouse refused rows: ${outcome.rejected[0]?.reason}`);
      insertMs.push(now() - s);
    }
    const run: RawRun = { inserts: n, rows: n * rawBatch, seconds: (now() - t0) / 1000, insertMs, cpu: meter.stop() };
    const [counted] = await rows<{ n: string }>(`SELECT count() AS n FROM ${ceilingTable}`);
    if (Number(counted?.n) !== run.rows + 1000)
      throw new Error(`raw phase: ${counted?.n} rows in the table, ${run.rows + 1000} inserted`);
    // Dropping the table stops its background merges, which would otherwise run into the next phase.
    await wh.client.command({ query: `DROP TABLE ${ceilingTable}` });
    rawRuns.push(run);
  };
  say(
    `phase 1: raw inserts of ${rawBatch.toLocaleString("en")}-row batches (${eventBytes} B per event in the stream) for ${RAW_SECONDS / 2} s (the other half after phase 3)`,
  );
  await rawPhase(RAW_SECONDS / 2);

  // ---------------- 2. node(s) + warm-up
  const nodeEnv = { NATS_URL: nats.url, CLICKHOUSE_URL: ch.url, TRIBUTARY_PIPELINES: pipelines };
  const prof = (name: string) =>
    CPU_PROF ? ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${join(CPU_PROF, name)}`] : [];
  if (SPLIT) {
    say("starting an ingest-only node (no CLICKHOUSE_URL) and a pipelines node that takes no HTTP traffic");
    nodes.push(await spawnNode({ ...nodeEnv, CLICKHOUSE_URL: "" }, prof("ingest")));
    nodes.push(await spawnNode(nodeEnv, prof("pipelines")));
  } else {
    say("starting the node");
    nodes.push(await spawnNode(nodeEnv, prof("node")));
  }
  say(`phase 2: warm-up, ${WARM_SECONDS} s closed loop`);
  const warm = await load("warm", "closed", { seconds: WARM_SECONDS });
  if ((await drain(warm.r.accepted, 60_000)).doneAt === undefined)
    throw new Error("warm-up events did not all reach ClickHouse within 60 s");
  const accepted: Record<string, number> = { warm: warm.r.accepted };
  await mergesSettled(10_000);

  // ---------------- 3. max
  say(`phase 3: max, ${CONNECTIONS} closed-loop senders × ${BATCH}-event requests for ${SECONDS} s`);
  {
    const samples: [number, number][] = [];
    let polling = true;
    let poller: Promise<void> = Promise.resolve();
    const c0 = await insertCounters();
    const base = await countRows();
    let whole: ReturnType<typeof cpuMeter> | undefined;
    const l = await load("max", "closed", { seconds: SECONDS }, () => {
      whole = cpuMeter();
      samples.push([now(), base]);
      poller = (async () => {
        while (polling) {
          const t = now();
          samples.push([t, await countRows()]);
          await Bun.sleep(Math.max(0, 100 - (now() - t)));
        }
      })();
    });
    polling = false;
    await poller;
    accepted.max = l.r.accepted;
    const atEnd = (samples.filter(([t]) => t <= l.t1).at(-1)?.[1] ?? base) - base;
    const d = await drain(base + l.r.accepted, 120_000, samples);
    if (d.doneAt === undefined)
      throw new Error(
        `max phase: ${(samples.at(-1)?.[1] ?? base) - base} of ${l.r.accepted} events in ClickHouse 120 s after the load`,
      );
    const wholeCpu = whole!.stop();
    const c1 = await insertCounters();
    // The steady part: after the first quarter of the window (at most 3 s): pipeline started, JIT warm.
    const skip = Math.min(3000, (l.t1 - l.t0) / 4);
    max = {
      r: l.r,
      cpu: l.cpu,
      landed: landedRate(samples, l.t0 + skip, l.t1),
      backlogAtEnd: l.r.accepted - atEnd,
      drainSeconds: (d.doneAt - l.t1) / 1000,
      overall: l.r.accepted / ((d.doneAt - l.t0) / 1000),
      rowsPerInsert: (c1.rows - c0.rows) / Math.max(1, c1.inserts - c0.inserts),
      wholeCpu,
    };
  }

  // ---------------- raw, second half
  await mergesSettled(15_000);
  say(`raw inserts again for ${RAW_SECONDS / 2} s (the node idle)`);
  await rawPhase(RAW_SECONDS / 2);
  {
    const all = rawRuns.flatMap((r) => r.insertMs).sort((a, b) => a - b);
    const seconds = rawRuns.reduce((a, r) => a + r.seconds, 0);
    const cpu = Object.fromEntries(
      Object.keys(rawRuns[0]!.cpu).map((k) => [
        k,
        rawRuns.reduce((a, r) => a + r.cpu[k as keyof Cpu] * r.seconds, 0) / seconds,
      ]),
    ) as Cpu;
    raw = {
      batch: rawBatch,
      eventBytes,
      runs: rawRuns,
      rowsPerSecond: rawRuns.reduce((a, r) => a + r.rows, 0) / seconds,
      p50InsertMs: all[Math.floor(all.length / 2)]!,
      maxInsertMs: all.at(-1)!,
      cpu,
    };
  }
  await mergesSettled(10_000);

  // ---------------- 4. half: receipt-to-queryable
  const offered = (Number.isFinite(max.landed.rate) ? max.landed.rate : max.overall) / 2;
  say(
    `phase 4: open loop at ${Math.round(offered).toLocaleString("en")} events/s for ${HALF_SECONDS} s, polling ClickHouse every ${POLL_MS} ms`,
  );
  {
    // received_at (ms since the epoch on 18.16, DateTime64(3) on 20.1+) → rows seen so far.
    const seen = new Map<number, number>();
    const latencies: [number, number][] = []; // [ms, events]
    const recvExpr = features.dateTime64 ? "toUInt64(toUnixTimestamp64Milli(received_at))" : "received_at";
    // Every earlier event was received before this phase: received_at alone tells this phase's rows
    // (an 8-byte column scan per poll rather than the messageIds').
    const since = Date.now();
    const poll = async () => {
      const t = Date.now();
      const rs = await rows<{ r: string; n: string }>(
        `SELECT ${recvExpr} AS r, count() AS n FROM ${table()} WHERE ${recvExpr} >= ${since} GROUP BY r`,
      );
      for (const { r, n } of rs) {
        const at = Number(r);
        const count = Number(n);
        const before = seen.get(at) ?? 0;
        if (count > before) {
          latencies.push([t - at, count - before]);
          seen.set(at, count);
        }
      }
      let total = 0;
      for (const v of seen.values()) total += v;
      return total;
    };
    let polling = true;
    let poller: Promise<void> = Promise.resolve();
    const l = await load("half", "open", { seconds: HALF_SECONDS, eventsPerSecond: offered }, () => {
      poller = (async () => {
        while (polling) {
          const s = now();
          await poll();
          await Bun.sleep(Math.max(0, POLL_MS - (now() - s)));
        }
      })();
    });
    polling = false;
    await poller;
    accepted.half = l.r.accepted;
    const until = now() + 60_000;
    for (;;) {
      const s = now();
      if ((await poll()) >= l.r.accepted) break;
      if (now() > until) throw new Error(`half phase: not every event reached ClickHouse within 60 s of the load`);
      await Bun.sleep(Math.max(0, POLL_MS - (now() - s)));
    }
    latencies.sort((a, b) => a[0] - b[0]);
    const total = latencies.reduce((a, [, n]) => a + n, 0);
    const q = (p: number) => {
      let acc = 0;
      for (const [ms, n] of latencies) if ((acc += n) > p * total) return ms;
      return latencies.at(-1)?.[0] ?? NaN;
    };
    half = {
      r: l.r,
      cpu: l.cpu,
      offered,
      p50: q(0.5),
      p90: q(0.9),
      p99: q(0.99),
      max: latencies.at(-1)?.[0] ?? NaN,
      measured: total,
      pollMs: POLL_MS,
    };
  }

  // ---------------- 4b. open: what a sender sees at a fixed rate while the pipeline runs
  say(`phase 4b: open loop at ${OPEN_RATE.toLocaleString("en")} events/s for ${OPEN_SECONDS} s, pipeline running`);
  {
    const l = await load("open", "open", { seconds: OPEN_SECONDS, eventsPerSecond: OPEN_RATE });
    accepted.open = l.r.accepted;
    open = { r: l.r, cpu: l.cpu };
  }

  // ---------------- 5. sink drain: the pipeline alone, JetStream → ClickHouse, no HTTP load
  say(`phase 5: backlog from an ingest-only node for ${DRAIN_SECONDS} s, then a node drains it with no HTTP load`);
  for (const n of nodes.splice(0)) await stopNode(n);
  nodes.push(await spawnNode({ ...nodeEnv, CLICKHOUSE_URL: "" }, prof("drain-ingest")));
  {
    const base = await countRows();
    const b = await load("drain", "closed", { seconds: DRAIN_SECONDS });
    accepted.drain = b.r.accepted;
    await stopNode(nodes.pop()!);
    if ((await countRows()) !== base) throw new Error("drain phase: rows landed while no pipeline ran");
    const samples: [number, number][] = [[now(), base]];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const t = now();
        samples.push([t, await countRows()]);
        await Bun.sleep(Math.max(0, 50 - (now() - t)));
      }
    })();
    const t0 = now();
    nodes.push(await spawnNode(nodeEnv, prof("drain")));
    // The node is ready once its dedup index is loaded; its pipeline may have started before.
    const ready = now();
    const meter = cpuMeter();
    const d = await drain(base + b.r.accepted, 180_000);
    const cpu = meter.stop();
    polling = false;
    await poller;
    if (d.doneAt === undefined) throw new Error(`drain phase: the backlog did not reach ClickHouse within 180 s`);
    samples.push([d.doneAt, base + b.r.accepted]);
    const atReady = samples.filter(([t]) => t <= ready).at(-1)?.[1] ?? base;
    sink = {
      events: b.r.accepted,
      ingestRate: b.r.eventsPerSecond,
      ingestCpu: b.cpu,
      landed: landedRate(samples, ready, d.doneAt),
      beforeReady: atReady - base,
      startSeconds: (ready - t0) / 1000,
      cpu,
    };
  }

  // ---------------- 6. verify
  say("stopping the node, checking every accepted event is in ClickHouse once");
  const stats = await nodes
    .at(-1)!
    .ask("stats")
    .catch(() => undefined);
  for (const n of nodes.splice(0)) await stopNode(n);
  const byTag = await rows<{ tag: string; n: string; u: string }>(
    `SELECT splitByChar('-', message_id)[2] AS tag, count() AS n, uniqExact(message_id) AS u FROM ${table()} WHERE connection = ${quoteString(CONNECTION)} GROUP BY tag`,
  );
  const [fin] = await rows<{ n: string }>(
    `SELECT count() AS n FROM ${table()} FINAL WHERE connection = ${quoteString(CONNECTION)}`,
  );
  const counted = Object.fromEntries(byTag.map((r) => [r.tag, Number(r.n)]));
  const total = byTag.reduce((a, r) => a + Number(r.n), 0);
  const unique = byTag.reduce((a, r) => a + Number(r.u), 0);
  const sum = Object.values(accepted).reduce((a, n) => a + n, 0);
  const ok =
    Object.entries(accepted).every(([t, n]) => counted[t] === n) &&
    byTag.every((r) => r.tag in accepted) &&
    total === sum &&
    unique === sum &&
    Number(fin?.n) === sum;
  // nats-server closes a client whose pulls outrun its 64 MiB pending limit; the node then stalls for ack_wait.
  const slowConsumers = (
    readFileSync(join(dir, "nats", "nats-server.log"), "utf8").match(/Slow Consumer Detected/g) ?? []
  ).length;
  verify = { accepted, counted, total, unique, final: Number(fin?.n), ok, stats, slowConsumers };
} catch (e) {
  failure = e;
} finally {
  await wh?.close().catch(() => {});
  for (const n of nodes) if (n.proc.exitCode === null) n.proc.kill("SIGKILL");
  await Promise.all([nats.stop().catch(() => {}), ch.stop().catch(() => {})]);
  rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- report

const fmt = (n: number | undefined, d = 0) =>
  n !== undefined && Number.isFinite(n)
    ? n.toLocaleString("en", { minimumFractionDigits: d, maximumFractionDigits: d })
    : "–";
const cores = (c: Cpu | undefined) =>
  c
    ? `${fmt(c.node, 2)} (${fmt(c.nodeJs, 2)}) / ${fmt(c.nats, 2)} / ${fmt(c.clickhouse, 2)} / ${fmt(c.loadgen, 2)} / ${fmt(c.bench, 2)} / ${fmt(c.other, 2)}`
    : "–";
const verdict = (ok: boolean) => (ok ? "**PASS**" : "**FAIL**");
const e2eRate = max?.landed.rate;
const ratio = raw && e2eRate !== undefined ? e2eRate / raw.rowsPerSecond : NaN;

console.log(`\n## Tributary end-to-end benchmark (HTTP → JetStream → pipeline → ClickHouse)\n`);
console.log(
  `One webhook connection, one \`import: events\` pipeline (no filter); events from ${FIXTURE.split("/").at(-1)} (${fmt(raw?.eventBytes)} B each as stored), every messageId unique; ` +
    `${BATCH}-event requests over ${CONNECTIONS} keep-alive connections from a load generator in its own process; ` +
    (SPLIT
      ? "two node processes (E2E_SPLIT): one takes the HTTP load without CLICKHOUSE_URL, the other runs the pipeline; "
      : "one node process; ") +
    `node batches: ${fmt(NODE_OPTS.batchMaxRows)} rows / ${fmt(NODE_OPTS.batchMaxBytes / 2 ** 20, 0)} MiB / ${fmt(NODE_OPTS.batchMaxAgeMs)} ms; ` +
    `ClickHouse ${wh?.features?.version ?? "?"}, ${navigator.hardwareConcurrency} CPU cores shared by everything, Bun ${Bun.version}.\n`,
);
console.log(
  `| measure | result | target | CPU cores: node${SPLIT ? "s" : ""} (main thread${SPLIT ? "s" : ""}) / nats / clickhouse / loadgen / bench / other |`,
);
console.log("| --- | ---: | --- | --- |");
if (raw)
  console.log(
    `| raw insert ceiling: the sink's rows straight into ClickHouse, ${fmt(raw.batch)}-row inserts one at a time | ${fmt(raw.rowsPerSecond)} rows/s | – | ${cores(raw.cpu)} |`,
  );
if (max) {
  console.log(
    `| end to end, closed loop: events landing in ClickHouse (steady ${fmt(max.landed.seconds, 1)} s) | ${fmt(max.landed.rate)} events/s | – | ${cores(max.cpu)} |`,
  );
  console.log(
    `| **end to end ÷ raw insert ceiling** | **${fmt(100 * ratio, 1)} %** | ≥ 70 % ${verdict(ratio >= 0.7)} | |`,
  );
  console.log(`| … HTTP ingest (2xx) in the same load | ${fmt(max.r.eventsPerSecond)} events/s | – | |`);
  console.log(
    `| … all ${fmt(max.r.accepted)} events counted, from the first POST | ${fmt(max.overall)} events/s | – | backlog at the end of the load ${fmt(max.backlogAtEnd)}, drained in ${fmt(max.drainSeconds, 1)} s |`,
  );
}
if (half) {
  console.log(
    `| **receipt → queryable** at half load (${fmt(half.r.eventsPerSecond)} events/s, open loop): p50 / p99 / max | **${fmt(half.p50)} / ${fmt(half.p99)}** / ${fmt(half.max)} ms | p99 ≤ 2,000 ms ${verdict(half.p99 <= 2000)} | ${cores(half.cpu)} |`,
  );
  console.log(
    `| … HTTP answer (2xx) at half load: p50 / p99 | ${fmt(half.r.p50, 1)} / ${fmt(half.r.p99, 1)} ms | – | |`,
  );
}
if (open)
  console.log(
    `| **HTTP answer (2xx), open loop at ${fmt(OPEN_RATE)} events/s** (${fmt(BATCH)}-event requests), pipeline running: p50 / p99 | **${fmt(open.r.p50, 1)} / ${fmt(open.r.p99, 1)} ms** | p99 ≤ 50 ms ${verdict(open.r.p99 <= 50)} | ${cores(open.cpu)} |`,
  );
if (max && sink) {
  // The thread answering senders: its CPU per event with the pipeline running (max phase, closed
  // loop) and without (the ingest-only node that built the backlog, closed loop).
  const withP = max.cpu.nodeJs / max.r.eventsPerSecond;
  const withoutP = sink.ingestCpu.nodeJs / sink.ingestRate;
  console.log(
    `| **HTTP thread CPU per event, pipeline running ÷ not** (${fmt(1e6 * withP, 2)} ÷ ${fmt(1e6 * withoutP, 2)} µs, closed loop) | **${fmt(withP / withoutP, 2)}×** | ≤ 1.2× ${verdict(withP / withoutP <= 1.2)} | pipeline workers used ${fmt(max.cpu.pipelines, 2)} cores |`,
  );
}
if (sink && raw)
  console.log(
    `| sink alone: a ${fmt(sink.events)}-event JetStream backlog drained, no HTTP load | ${fmt(sink.landed.rate)} events/s = ${fmt((100 * sink.landed.rate) / raw.rowsPerSecond, 1)} % of raw | – | ${cores(sink.cpu)} |`,
  );
// CPU time per event is steadier than rates on a shared machine, and says where the cores went.
const perEvent = (name: string, c: Cpu | undefined, rate: number | undefined, client: "bench" | "none") => {
  if (!c || !rate || !Number.isFinite(rate)) return;
  const us = (cores: number) => (1e6 * cores) / rate;
  const parts = [c.node, c.nats, c.clickhouse, client === "bench" ? c.bench : 0];
  console.log(
    `| ${name} | ${parts.map((x) => fmt(us(x), 1)).join(" | ")} | ${fmt(us(parts.reduce((a, x) => a + x, 0)), 1)} |`,
  );
};
if (raw || max || sink) {
  console.log(
    `\n| CPU µs per event (core-seconds ÷ events) | node${SPLIT ? "s" : ""} | nats-server | clickhouse-server | insert client (bench) | total |`,
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  perEvent("raw insert ceiling", raw?.cpu, raw?.rowsPerSecond, "bench");
  // From the first POST until the last of them was counted: every event went all the way.
  perEvent("end to end, max", max?.wholeCpu, max?.overall, "none");
  perEvent("sink alone (backlog drain)", sink?.cpu, sink?.landed.rate, "none");
  const total = (c: Cpu | undefined, rate: number | undefined, client: boolean) =>
    c && rate ? (c.node + c.nats + c.clickhouse + (client ? c.bench : 0)) / rate : NaN;
  const r = total(raw?.cpu, raw?.rowsPerSecond, true);
  const e2e = total(max?.wholeCpu, max?.overall, false) / r;
  // Tributary's own share: the node's CPU per event against the insert client's per row.
  const own = max?.wholeCpu && raw ? max.wholeCpu.node / max.overall / (raw.cpu.bench / raw.rowsPerSecond) : NaN;
  console.log(
    `\nBy CPU, which other jobs on the machine disturb less than rates: an event end to end (node, its pipeline workers, nats-server, clickhouse-server) costs **${fmt(e2e, 2)}×** the CPU of a raw insert's row (client + clickhouse-server; target ≤ 1.5× ${verdict(e2e <= 1.5)}), ` +
      `the sink alone ${fmt(total(sink?.cpu, sink?.landed.rate, false) / r, 2)}×; ` +
      `Tributary's share (node CPU per event ÷ the raw insert client's per row) ${fmt(own, 2)}×.`,
  );
}
console.log("");
if (raw)
  console.log(
    `Raw: ${raw.runs.map((r) => `${fmt(r.inserts)} inserts in ${fmt(r.seconds, 1)} s (${fmt(r.rows / r.seconds)} rows/s)`).join(" before the node, ")} after the max phase; ` +
      `median insert ${fmt(raw.p50InsertMs)} ms, slowest ${fmt(raw.maxInsertMs)} ms. The sink's own Inserter (JSONEachRow through Bun's fetch, as the sink sends it) on rows eventRow() made from normalised events.`,
  );
if (max)
  console.log(
    `Max: the sink inserted ${fmt(max.rowsPerInsert)} rows per insert on average (ClickHouse's InsertQuery/InsertedRows counters).`,
  );
if (half)
  console.log(
    `Latency: all ${fmt(half.measured)} events of the phase, from received_at (the node's clock at receipt) to the start of the first ${half.pollMs} ms poll that counted them ` +
      `(so up to one poll late).`,
  );
if (sink)
  console.log(
    `Sink: the backlog came from an ingest-only node (${fmt(sink.ingestRate)} events/s); a full node then started (${fmt(sink.startSeconds, 1)} s to load its dedup index, ` +
      `${fmt(sink.beforeReady)} events landed meanwhile) and the rate counts from then to the last row.`,
  );
if (verify) {
  const tags = Object.keys(verify.accepted)
    .map((t) => `${t} ${fmt(verify!.accepted[t])}→${fmt(verify!.counted[t] ?? 0)}`)
    .join(", ");
  const p = verify.stats?.pipelines?.[`${CONNECTION}/${PIPELINE}`];
  console.log(
    `Verify: ${verify.ok ? "every event answered 2xx is in ClickHouse exactly once" : "**MISMATCH**"} (answered 2xx→rows: ${tags}; ${fmt(verify.total)} rows, ${fmt(verify.unique)} distinct messageIds, ${fmt(verify.final)} with FINAL)` +
      (p ? `; last node's pipeline: failed ${fmt(p.failed)}, dead-lettered ${fmt(p.deadLettered)}.` : "."),
  );
}
if (verify?.slowConsumers)
  console.log(
    `\nnats-server disconnected a slow consumer ${verify.slowConsumers} time(s) (its log says "Slow Consumer Detected"): the node's pipeline stalled for ack_wait each time.`,
  );
const noisy = [raw?.cpu, max?.cpu, half?.cpu, sink?.cpu].filter((c): c is Cpu => !!c && c.other > 0.2);
if (noisy.length)
  console.log(
    `\nNote: something else used over 0.2 of a core during ${noisy.length} phase(s) ("other"): the machine was shared, ratios are less reliable than usual.`,
  );
console.log(`\n(${fmt((now() - started) / 1000, 1)} s)`);
// One JSON line of the headline figures, last: `bun bench/rounds.ts N bench/e2e.ts` gives their range over N runs.
{
  const usPerEvent = (c: Cpu | undefined, rate: number | undefined, client: boolean) =>
    c && rate ? (1e6 * (c.node + c.nats + c.clickhouse + (client ? c.bench : 0))) / rate : undefined;
  console.log(
    JSON.stringify({
      rawRowsPerSecond: raw?.rowsPerSecond,
      e2eEventsPerSecond: e2eRate,
      e2ePercentOfRaw: 100 * ratio,
      halfEventsPerSecond: half?.r.eventsPerSecond,
      receiptToQueryableP50Ms: half?.p50,
      receiptToQueryableP99Ms: half?.p99,
      sinkEventsPerSecond: sink?.landed.rate,
      rawUsPerRow: usPerEvent(raw?.cpu, raw?.rowsPerSecond, true),
      e2eUsPerEvent: usPerEvent(max?.wholeCpu, max?.overall, false),
      openP99Ms: open?.r.p99,
      httpThreadUsPerEventWithPipeline: max ? (1e6 * max.cpu.nodeJs) / max.r.eventsPerSecond : undefined,
      httpThreadUsPerEventWithout: sink ? (1e6 * sink.ingestCpu.nodeJs) / sink.ingestRate : undefined,
      exactlyOnce: verify?.ok ?? false,
    }),
  );
}
if (failure) {
  console.log(`\nERROR the benchmark did not complete: ${String((failure as Error)?.stack ?? failure)}`);
  process.exit(1);
}
if (!verify?.ok || (verify.stats?.pipelines?.[`${CONNECTION}/${PIPELINE}`]?.failed ?? 0) > 0) process.exit(1);
process.exit(0);
