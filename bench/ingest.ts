// `npm run bench:ingest`: Tributary's ingest throughput, latency and memory under overload,
// against the machine's ceiling (a bare Bun.serve that only parses the JSON) in the same run.
//
// It starts its own nats-server (temporary store), then for each phase a server process and a
// load-generator process (bench/loadgen.ts), so neither shares an event loop with the other:
//   1. ceiling   bare Bun.serve + JSON.parse, closed loop, BENCH_CONNECTIONS senders
//   2. max       Tributary, the same closed loop (after a short warm-up)
//   3. half      Tributary, open loop at half of phase 2's events/s: p50/p99
//   4. overload  Tributary, BENCH_OVERLOAD_CONNECTIONS closed-loop senders; node RSS sampled
//   5. after     Tributary, closed loop again: the node recovered
// then reads every stored message's id header back from JetStream and checks that each event
// answered 2xx is stored, once. It always exits 0: it is a report.
//
// The headline figure is CPU per event, node ÷ bare parse, from phases 2 and 1 of the same run:
// each process tree's user + system CPU over its phase's timed span, divided by the events
// answered 2xx (see the report's "CPU per event" lines for what each sums).
//
// Environment: BENCH_SECONDS (8) per measured phase, BENCH_CONNECTIONS (8 per ingest thread, one write key each),
// BENCH_BATCH (500), BENCH_OVERLOAD_CONNECTIONS (256), BENCH_OVERLOAD_SECONDS (BENCH_SECONDS/2),
// BENCH_FIXTURES (test/fixtures), BENCH_CPU_PROF (a directory: profile the node there),
// BENCH_QUICK (1: phases 1 and 2 only, for before/after comparisons of CPU per event).
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, DeliverPolicy } from "@nats-io/jetstream";
import { LocalNats } from "../src/services/nats-server.ts";
import { ManagedProcess } from "../src/services/managed-process.ts";
import { STREAM } from "../src/bus/subjects.ts";
import { IDS_HEADER } from "../src/bus/shard-writer.ts";
import { defaults } from "../src/config/env.ts";
import type { LoadResult, LoadSpec } from "./loadgen.ts";
import { parseCommand } from "../scripts/cli.ts";

// Before anything starts: `--help` prints this and exits, an unknown flag exits 2.
parseCommand({
  name: "bench:ingest",
  options: {},
  usage: `usage: npm run bench:ingest

Ingest CPU per event, throughput, latency and memory under overload, against the machine's
floor (a bare Bun.serve that only parses the JSON) in the same run. Prints node CPU µs/event,
bare-parse CPU µs/event and their ratio (target ≤ 5×), each a process tree's CPU over its phase
divided by the events answered 2xx. Starts its own nats-server and node processes; checks that
every event answered 2xx is stored once. Always exits 0: it is a report.

  -h, --help   this help

Environment: BENCH_SECONDS (8) per measured phase, BENCH_CONNECTIONS (8 per ingest thread), BENCH_BATCH (500),
BENCH_OVERLOAD_CONNECTIONS (256), BENCH_OVERLOAD_SECONDS (BENCH_SECONDS/2), BENCH_FIXTURES
(test/fixtures), BENCH_CPU_PROF (a directory: profile the node there), BENCH_QUICK (1: the
bare parse and the node's closed loop only).`,
});

const env = process.env;
const num = (name: string, d: number) => (env[name] ? Number(env[name]) : d);
const SECONDS = num("BENCH_SECONDS", 8);
// SO_REUSEPORT spreads connections by hash: at least 8 per ingest thread, so each gets a share.
const CONNECTIONS = num(
  "BENCH_CONNECTIONS",
  8 * (Number(process.env.TRIBUTARY_INGEST_WORKERS) || navigator.hardwareConcurrency || 1),
);
const BATCH = num("BENCH_BATCH", 500);
const OVERLOAD_CONNECTIONS = num("BENCH_OVERLOAD_CONNECTIONS", 256);
const OVERLOAD_SECONDS = num("BENCH_OVERLOAD_SECONDS", Math.max(3, SECONDS / 2));
const WARMUP_SECONDS = Math.min(2, SECONDS);
const FIXTURES = resolve(env.BENCH_FIXTURES ?? join(import.meta.dir, "../test/fixtures"));
const CPU_PROF = env.BENCH_CPU_PROF ? resolve(env.BENCH_CPU_PROF) : undefined;
const QUICK = env.BENCH_QUICK === "1";
const BUN = process.execPath;
const MiB = 2 ** 20;

const children = new Set<Subprocess>();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  ManagedProcess.killAllSync();
});
const say = (s: string) => process.stderr.write(`[bench] ${s}\n`);

// ---------------------------------------------------------------- processes

interface Server {
  proc: Subprocess<"ignore", "pipe", "inherit">;
  port: number;
  /** Asks the process over IPC; it answers with one message. */
  ask(m: string): Promise<any>;
}

async function spawnServer(
  script: string,
  extraEnv: Record<string, string> = {},
  bunArgs: string[] = [],
): Promise<Server> {
  const answers: ((m: unknown) => void)[] = [];
  const proc = Bun.spawn([BUN, ...bunArgs, join(import.meta.dir, script)], {
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
  // The node waits for NATS and loads its dedup index before it listens; it must not hang the bench.
  const startup = setTimeout(() => proc.kill("SIGKILL"), 60_000);
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${script} exited (or did not start within 60 s) before it was listening`);
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
        const t = setTimeout(() => rej(new Error(`${script} did not answer "${m}"`)), 30_000);
        answers.push((a) => {
          clearTimeout(t);
          res(a);
        });
        proc.send(m);
      }),
  };
}

const CLK_TCK = 100;
/** User + system CPU seconds a process (every thread of it) has used so far. */
function cpuOfOne(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** CPU seconds by thread name (Bun's JavaScript thread is named after the process; `HTTP`, `Heap Helper`, `JIT`...). */
function threadsCpu(pid: number | undefined): Map<string, number> {
  const out = new Map<string, number>();
  if (!pid) return out;
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      try {
        const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, "utf8");
        const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")).replace(/\d+$/, "#");
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        out.set(name, (out.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / CLK_TCK);
      } catch {}
    }
  } catch {}
  return out;
}

/** The process's children, from every thread's `children` list (Linux 3.5+). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const list = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim();
      if (list) for (const c of list.split(" ")) out.push(Number(c));
    }
  } catch {}
  return out;
}

/**
 * CPU seconds of a server: the process (all its threads: JavaScript, HTTP, GC, worker threads) and
 * every process it started and still runs (worker processes, sandboxes), read live. A child that
 * exits mid-phase takes its CPU with it, so phases with restarts under-count.
 */
function cpuOf(pid: number | undefined): number {
  if (!pid) return 0;
  let total = cpuOfOne(pid);
  for (const c of childrenOf(pid)) total += cpuOf(c);
  return total;
}

/** Busy and total CPU seconds of the whole machine so far (every core). */
function machineCpu(): { busy: number; total: number } {
  const f = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, n) => a + n, 0);
  const idle = f[3]! + f[4]!;
  return { busy: (total - idle) / CLK_TCK, total: total / CLK_TCK };
}

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

interface Phase {
  name: string;
  r: LoadResult;
  /** CPU cores used during the phase by the server, nats-server, the load generator and anything else on the machine. */
  cpu: { server: number; nats: number; loadgen: number; other: number };
  /** CPU seconds the server (its process tree) and nats-server used during the timed span. */
  cpuSeconds: { server: number; nats: number };
  /** CPU seconds of the server process's own threads during the timed span, by thread name. */
  threads: Map<string, number>;
}

/** Microseconds of CPU per event answered 2xx: `seconds` over the phase's accepted events. */
const usPerEvent = (seconds: number, r: LoadResult) => (r.accepted > 0 ? (seconds * 1e6) / r.accepted : NaN);

async function load(
  server: Server,
  tag: string,
  mode: "closed" | "open",
  o: { connections?: number; eventsPerSecond?: number; seconds?: number } = {},
): Promise<{ r: LoadResult; cpu: Phase["cpu"]; cpuSeconds: Phase["cpuSeconds"]; threads: Phase["threads"] }> {
  const spec: LoadSpec = {
    host: "127.0.0.1",
    port: server.port,
    path: "/v1/events",
    keys: KEYS,
    mode,
    connections: o.connections ?? CONNECTIONS,
    maxConnections: 256,
    eventsPerSecond: o.eventsPerSecond,
    seconds: o.seconds ?? SECONDS,
    batch: BATCH,
    tag,
    fixturesDir: FIXTURES,
  };
  const p = Bun.spawn([BUN, join(import.meta.dir, "loadgen.ts"), JSON.stringify(spec)], {
    stdout: "pipe",
    stderr: "inherit",
    stdin: "ignore",
  });
  const kill = setTimeout(() => p.kill("SIGKILL"), spec.seconds * 1000 + 90_000);
  // The generator builds its requests, prints {"started"} when its clock starts, then its result:
  // CPU counters are read at those two lines, so they cover the timed span only.
  let s0 = 0,
    n0 = 0,
    m0 = machineCpu(),
    s1 = 0,
    n1 = 0,
    m1 = m0;
  let r: LoadResult | undefined;
  let t0 = new Map<string, number>(),
    t1 = t0;
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const chunk of p.stdout) {
    buffered += decoder.decode(chunk);
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      const line = JSON.parse(buffered.slice(0, nl)) as LoadResult & { started?: true };
      buffered = buffered.slice(nl + 1);
      if (line.started) {
        [s0, n0, m0] = [cpuOf(server.proc.pid), cpuOf(nats.pid), machineCpu()];
        t0 = threadsCpu(server.proc.pid);
      } else {
        [s1, n1, m1] = [cpuOf(server.proc.pid), cpuOf(nats.pid), machineCpu()];
        t1 = threadsCpu(server.proc.pid);
        r = line;
      }
    }
  }
  clearTimeout(kill);
  if ((await p.exited) !== 0 || !r) throw new Error(`load generator failed (${tag})`);
  const span = (m1.total - m0.total) / navigator.hardwareConcurrency;
  const cpu = { server: (s1 - s0) / span, nats: (n1 - n0) / span, loadgen: r.cpuSeconds / r.elapsed, other: 0 };
  // Whatever else ran meanwhile: the bench itself, other jobs on a shared machine.
  cpu.other = Math.max(0, (m1.busy - m0.busy) / span - cpu.server - cpu.nats - cpu.loadgen);
  const threads = new Map([...t1].map(([k, v]) => [k, v - (t0.get(k) ?? 0)]));
  return { r, cpu, cpuSeconds: { server: s1 - s0, nats: n1 - n0 }, threads };
}

// ---------------------------------------------------------------- JetStream check

/** Events stored per phase tag (messageIds `b-<tag>-...`), from every message's id header. */
async function storedByTag(
  natsUrl: string,
): Promise<{ byTag: Record<string, number>; unique: number; messages: number; bytes: number }> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(STREAM);
    const byTag: Record<string, number> = {};
    const seen = new Set<string>();
    if (info.state.messages > 0) {
      const js = jetstream(nc);
      const c = await js.consumers.get(STREAM, { deliver_policy: DeliverPolicy.All, headers_only: true });
      const messages = await c.consume({ max_messages: 2000 });
      for await (const m of messages) {
        const ids = JSON.parse(m.headers?.get(IDS_HEADER) || "[]") as string[];
        for (const id of ids) {
          const tag = id.split("-")[1] ?? "?";
          byTag[tag] = (byTag[tag] ?? 0) + 1;
          seen.add(id);
        }
        if (m.seq >= info.state.last_seq) break;
      }
      messages.stop();
    }
    return { byTag, unique: seen.size, messages: info.state.messages, bytes: info.state.bytes };
  } finally {
    await nc.close();
  }
}

// ---------------------------------------------------------------- run

const dir = mkdtempSync(join(tmpdir(), "tributary-bench-"));
const pipelines = join(dir, "pipelines");
mkdirSync(pipelines);
const KEYS = Array.from({ length: CONNECTIONS }, (_, i) => `bench-write-key-${i}`);
KEYS.forEach((k, i) =>
  writeFileSync(
    join(pipelines, `bench${i}.yaml`),
    `connection: bench${i}\nsource: webhook\nwriteKeys: [${JSON.stringify(k)}]\n`,
  ),
);
const nats = await LocalNats.create({ dataDir: join(dir, "nats") });
await nats.start();

const phases: Phase[] = [];
let overload:
  | {
      rssBefore: number;
      rssPeak: number;
      rssAfter: number;
      heapPeak: number;
      inFlightPeak: number;
      inFlightRequestsPeak: number;
    }
  | undefined;
let nodeStats: any;
let nodeServer: Server | undefined;
/** Thrown to end the run after phase 2 (BENCH_QUICK). */
class Quick extends Error {}
let stored: Awaited<ReturnType<typeof storedByTag>> | undefined;
const started = performance.now();
let failure: unknown;
try {
  say(`${BATCH}-event batches from ${FIXTURES}, ${CONNECTIONS} connections, ${SECONDS} s per phase`);

  say("phase 1: bare Bun.serve + JSON.parse (ceiling)");
  const bare = await spawnServer("bare-server.ts");
  await load(bare, "warmbare", "closed", { seconds: WARMUP_SECONDS });
  phases.push({
    name: "ceiling: bare Bun.serve, JSON.parse only (closed loop)",
    ...(await load(bare, "bare", "closed")),
  });
  bare.proc.kill();
  await bare.proc.exited;

  say("starting the node");
  if (CPU_PROF) mkdirSync(CPU_PROF, { recursive: true });
  const node = await spawnServer(
    "node-process.ts",
    { NATS_URL: nats.url, TRIBUTARY_PIPELINES: pipelines },
    CPU_PROF ? ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${CPU_PROF}`] : [],
  );
  nodeServer = node;
  await load(node, "warm", "closed", { seconds: WARMUP_SECONDS });

  say("phase 2: Tributary, closed loop (max)");
  const max = { name: "Tributary max (closed loop)", ...(await load(node, "max", "closed")) };
  phases.push(max);

  if (QUICK) throw new Quick();
  const half = max.r.eventsPerSecond / 2;
  say(`phase 3: Tributary, open loop at ${Math.round(half)} events/s`);
  phases.push({
    name: `Tributary at half of max (open loop, ${Math.round(half).toLocaleString("en")} ev/s offered)`,
    ...(await load(node, "half", "open", { eventsPerSecond: half })),
  });

  say(`phase 4: overload, ${OVERLOAD_CONNECTIONS} senders for ${OVERLOAD_SECONDS} s`);
  const pid = node.proc.pid;
  const rssBefore = rssOf(pid);
  let rssPeak = rssBefore;
  let heapPeak = 0;
  let inFlightPeak = 0;
  let inFlightRequestsPeak = 0;
  let sampling = true;
  const rssTimer = setInterval(() => (rssPeak = Math.max(rssPeak, rssOf(pid))), 25);
  const statsLoop = (async () => {
    while (sampling) {
      const s = await node.ask("stats").catch(() => undefined);
      if (s) {
        heapPeak = Math.max(heapPeak, s.memory.heapUsed);
        inFlightPeak = Math.max(inFlightPeak, s.inFlightBytes);
        inFlightRequestsPeak = Math.max(inFlightRequestsPeak, s.inFlightRequests);
      }
      await Bun.sleep(100);
    }
  })();
  phases.push({
    name: `Tributary overload (${OVERLOAD_CONNECTIONS} closed-loop senders)`,
    ...(await load(node, "over", "closed", { connections: OVERLOAD_CONNECTIONS, seconds: OVERLOAD_SECONDS })),
  });
  sampling = false;
  await statsLoop;
  clearInterval(rssTimer);
  await Bun.sleep(1000);
  overload = { rssBefore, rssPeak, rssAfter: rssOf(pid), heapPeak, inFlightPeak, inFlightRequestsPeak };

  say("phase 5: Tributary after the overload (closed loop)");
  phases.push({
    name: "Tributary after overload (closed loop)",
    ...(await load(node, "after", "closed", { seconds: Math.max(2, SECONDS / 4) })),
  });

  await stopAndRead();
} catch (e) {
  if (e instanceof Quick) await stopAndRead().catch((e2) => (failure = e2));
  else failure = e;
} finally {
  await nats.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}

async function stopAndRead(): Promise<void> {
  const node = nodeServer!;
  nodeStats = await node.ask("stats");
  say("stopping the node, reading JetStream back");
  await node.ask("stop").catch(() => {});
  const killNode = setTimeout(() => node.proc.kill("SIGKILL"), 15_000);
  await node.proc.exited;
  clearTimeout(killNode);
  stored = await Promise.race([
    storedByTag(nats.url),
    Bun.sleep(60_000).then(() => Promise.reject(new Error("reading JetStream back took over 60 s"))),
  ]);
}

// ---------------------------------------------------------------- report

const fmt = (n: number, d = 0) =>
  Number.isFinite(n) ? n.toLocaleString("en", { minimumFractionDigits: d, maximumFractionDigits: d }) : "–";
const ceiling = phases[0]?.r.eventsPerSecond ?? NaN;
console.log(`\n## Tributary ingest benchmark\n`);
console.log(
  `${BATCH}-event batches (${fmt((phases[0]?.r.bodyBytes ?? 0) / 1024, 0)} KiB of JSON) built from ${FIXTURES}/*.json, every messageId unique; ` +
    `${CONNECTIONS} keep-alive connections (one write key each), ${SECONDS} s per phase; load generator in its own process; ` +
    `${navigator.hardwareConcurrency} CPU cores, Bun ${Bun.version}.\n`,
);
console.log(
  "| phase | events/s | MB/s | p50 ms | p99 ms | vs ceiling | answers | CPU cores: server / nats / loadgen / other | CPU µs/event: server / nats |",
);
console.log("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |");
for (const { name, r, cpu, cpuSeconds } of phases) {
  const answers =
    Object.entries(r.statuses)
      .map(([s, n]) => `${s}×${n}`)
      .join(" ") + (r.errors ? ` no-answer×${r.errors}` : "");
  console.log(
    `| ${name} | ${fmt(r.eventsPerSecond)} | ${fmt(r.mbPerSecond, 1)} | ${fmt(r.p50, 1)} | ${fmt(r.p99, 1)} | ${fmt((100 * r.eventsPerSecond) / ceiling, 1)} % | ${answers} | ${fmt(cpu.server, 2)} / ${fmt(cpu.nats, 2)} / ${fmt(cpu.loadgen, 2)} / ${fmt(cpu.other, 2)} | ${fmt(usPerEvent(cpuSeconds.server, r), 2)} / ${fmt(usPerEvent(cpuSeconds.nats, r), 2)} |`,
  );
}

// The issue's figure: CPU per event against a floor measured in the same run, not throughput
// (on shared cores, throughput mostly measures what else runs).
const bareP = phases.find((p) => p.r.tag === "bare");
const maxP = phases.find((p) => p.r.tag === "max");
const threadLine = (p: Phase) =>
  [...p.threads]
    .filter(([, v]) => v > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${fmt(usPerEvent(v, p.r), 2)}`)
    .join(", ");
const cpuRatio =
  bareP && maxP ? usPerEvent(maxP.cpuSeconds.server, maxP.r) / usPerEvent(bareP.cpuSeconds.server, bareP.r) : NaN;
if (bareP && maxP)
  console.log(
    `\nCPU per event (closed loop, ${BATCH}-event batches; each figure is one process tree's user + system CPU over the timed ` +
      `span of its phase, divided by the events answered 2xx in it):\n` +
      `- node: ${fmt(usPerEvent(maxP.cpuSeconds.server, maxP.r), 2)} µs/event — phase "max"; the node process and every ` +
      `process it started (all threads: HTTP, JavaScript, GC, workers). Sums reading, parsing, validating, normalising, ` +
      `serialising and publishing to JetStream, and waiting for its acknowledgement; not nats-server ` +
      `(${fmt(usPerEvent(maxP.cpuSeconds.nats, maxP.r), 2)} µs/event) nor the load generator.\n` +
      `- bare parse: ${fmt(usPerEvent(bareP.cpuSeconds.server, bareP.r), 2)} µs/event — phase "ceiling"; a bare Bun.serve ` +
      `process that reads each body, JSON.parses it and answers, the same batches and connections.\n` +
      `- ratio node ÷ bare parse: ${fmt(cpuRatio, 2)}× (target ≤ 5×).\n` +
      `- by thread, µs/event: node ${threadLine(maxP)}; bare ${threadLine(bareP)}.`,
  );
const half = phases.find((p) => p.r.tag === "half");
if (half?.r.late)
  console.log(
    `\nopen loop: ${half.r.late} requests could not start on schedule (all sockets busy); their latency counts from the schedule.`,
  );
if (overload) {
  const over = phases.find((p) => p.r.tag === "over")!.r;
  console.log(
    `\nOverload: node RSS ${fmt(overload.rssBefore / MiB)} MiB before, peak ${fmt(overload.rssPeak / MiB)} MiB, ${fmt(overload.rssAfter / MiB)} MiB 1 s after; ` +
      `peak JS heap ${fmt(overload.heapPeak / MiB)} MiB; peak in-flight body bytes ${fmt(overload.inFlightPeak / MiB)} MiB in ${overload.inFlightRequestsPeak} requests. ` +
      `Answers: 200×${over.statuses[200] ?? 0}, 429×${over.statuses[429] ?? 0}, 503×${over.statuses[503] ?? 0}` +
      `${Object.keys(over.statuses)
        .filter((s) => !["200", "429", "503"].includes(s))
        .map((s) => `, ${s}×${over.statuses[s]}`)
        .join("")}, no answer×${over.errors}; ` +
      `latency of every answer p50 ${fmt(over.allP50, 1)} ms, p99 ${fmt(over.allP99, 1)} ms.`,
  );
}

const tributary = phases.filter((p) => p.r.tag !== "bare");
const answered2xx = tributary.reduce((a, p) => a + p.r.accepted, 0);
if (stored) {
  console.log(
    `\nJetStream: ${fmt(stored.messages)} messages, ${fmt(stored.bytes / MiB, 1)} MiB, ${fmt(stored.unique)} distinct messageIds` +
      ` (${Object.entries(stored.byTag)
        .map(([t, n]) => `${t} ${fmt(n)}`)
        .join(", ")}).`,
  );
  console.log(
    `Node counters: accepted ${fmt(nodeStats?.stats.accepted)}, duplicates ${fmt(nodeStats?.stats.duplicates)}, rejected ${fmt(nodeStats?.stats.rejected)}, ` +
      `dedup index ${fmt(nodeStats?.indexedIds)} ids, limiter 429s ${fmt(nodeStats?.limiterRejected)}; ` +
      `requests answered per thread (SO_REUSEPORT spreads connections by hash): ${(nodeStats?.requestsPerThread ?? []).map((n: number) => fmt(n)).join(" / ")}.`,
  );
}

const pass = (ok: boolean, what: string) => console.log(`${ok ? "PASS" : "FAIL"} ${what}`);
console.log("");
if (failure) console.log(`FAIL the benchmark did not complete: ${String((failure as Error)?.stack ?? failure)}`);
const max = phases.find((p) => p.r.tag === "max");
if (max)
  pass(
    cpuRatio <= 5,
    `CPU per event: the node ${fmt(cpuRatio, 2)}× a bare Bun.serve parse (target ≤ 5×); throughput ${fmt(max.r.eventsPerSecond)} events/s, ${fmt((100 * max.r.eventsPerSecond) / ceiling, 1)} % of the bare-parse ${fmt(ceiling)} events/s (for information: on shared cores it measures the machine)`,
  );
if (half) {
  const kept = half.r.eventsPerSecond >= 0.95 * (half.r.offeredEventsPerSecond ?? 0);
  pass(
    half.r.p99 <= 50 && kept,
    `latency at half load: p99 ${fmt(half.r.p99, 1)} ms (target ≤ 50 ms), p50 ${fmt(half.r.p50, 1)} ms, ${fmt(half.r.eventsPerSecond)} of ${fmt(half.r.offeredEventsPerSecond ?? 0)} events/s offered stored`,
  );
}
if (overload) {
  // Bounded by the admission limit (TRIBUTARY_MAX_IN_FLIGHT_BYTES, 64 MiB by default), not growing
  // with the senders: what the node held before, plus 16× the bodies it may admit (each body's
  // bytes, its text, the parsed and normalised events, the JetStream batch, and garbage the
  // collector has not reached yet: 10–11× measured on this machine). And the limiter held the line.
  const cap = Number(process.env.TRIBUTARY_MAX_IN_FLIGHT_BYTES) || defaults.maxInFlightBytes;
  const bound = overload.rssBefore + 16 * cap;
  const over = phases.find((p) => p.r.tag === "over")!.r;
  const after = phases.find((p) => p.r.tag === "after");
  pass(
    overload.rssPeak < bound &&
      overload.inFlightPeak <= cap &&
      (over.statuses[429] ?? 0) + (over.statuses[503] ?? 0) > 0,
    `memory under overload: peak RSS ${fmt(overload.rssPeak / MiB)} MiB (bound ${fmt(bound / MiB)} MiB: ${fmt(overload.rssBefore / MiB)} before + 16 × the ${fmt(cap / MiB)} MiB admission limit), ` +
      `peak bodies in flight ${fmt(overload.inFlightPeak / MiB, 1)} MiB (limit ${fmt(cap / MiB)} MiB), excess load shed with 429/503` +
      (after
        ? `; afterwards ${fmt(after.r.eventsPerSecond)} events/s, ${fmt((100 * after.r.eventsPerSecond) / (max?.r.eventsPerSecond ?? NaN), 0)} % of max`
        : ""),
  );
}
if (stored) {
  const lines = tributary.map((p) => ({ tag: p.r.tag, answered: p.r.accepted, stored: stored!.byTag[p.r.tag] ?? 0 }));
  const exact = lines.every(
    (l) => l.stored === l.answered || (l.stored > l.answered && phases.find((p) => p.r.tag === l.tag)!.r.statuses[503]),
  );
  pass(
    exact && stored.unique === Object.values(stored.byTag).reduce((a, n) => a + n, 0) && answered2xx > 0,
    `durability: every event answered 2xx is in JetStream, once (${lines.map((l) => `${l.tag} ${fmt(l.answered)}→${fmt(l.stored)}`).join(", ")})`,
  );
}
console.log(`\n(${fmt((performance.now() - started) / 1000, 1)} s)`);
process.exit(0);
