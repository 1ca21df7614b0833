// `npm run bench:export`: an export pipeline (PRODUCT.md §7, `type: webhook`) draining a backlog to a
// local receiver that only counts, beside a bare loop that POSTs the same batches to the same
// receiver with `fetch` at the same concurrency, in the same run, so a noisy machine shows up in
// the ratio rather than as a moving baseline.
//
// It starts its own nats-server and clickhouse-server (temporary data dirs, free ports; a node runs
// its pipelines only with ClickHouse reachable), the receiver in a process of its own (this file
// with BENCH_EXPORT_ROLE=receiver: Bun.serve, JSON.parse of each body, events counted, 200), and a
// pipelines dir with one connection whose one pipeline exports to the receiver.
//   1. backlog  EXPORT_EVENTS events (unique messageIds, EXPORT_USERS users) POSTed to an ingest-only
//               node (`bun src/main.ts` without CLICKHOUSE_URL: it creates the pipeline's consumer and
//               stores, nothing more), then stopped
//   2. export   a full node drains the backlog: events/s counted by the receiver between its first
//               and last request, CPU from the first request to the last event counted
//   3. bare     the receiver's copies of the export's request bodies POSTed again by EXPORT_IN_FLIGHT
//               fetch loops in this process (the pipeline's maxInFlight), until as many events were sent
// CPU per event comes from /proc (user + system of each process over the phase; the node with its
// pipeline worker processes). It prints a
// markdown table and one JSON line; exit 1 when the export lost events or the run broke.
//
// Environment: EXPORT_EVENTS (200000), EXPORT_BATCH (500, the pipeline's maxEvents), EXPORT_IN_FLIGHT
// (4, its maxInFlight), EXPORT_USERS (10000), EXPORT_FORMAT (json-array), EXPORT_CPU_PROF (a directory:
// profile the draining node there, its pipelines in its own process).
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { LocalNats } from "../src/services/nats-server.ts";
import { LocalClickHouse } from "../src/services/clickhouse-server.ts";
import { ManagedProcess } from "../src/services/managed-process.ts";
import { freePort, waitForPort } from "../src/services/ports.ts";
import { parseCommand } from "../scripts/cli.ts";

const env = process.env;
const num = (name: string, d: number) => (env[name] ? Number(env[name]) : d);

// ---------------------------------------------------------------- the receiver (its own process)

if (env.BENCH_EXPORT_ROLE === "receiver") {
  let events = 0;
  let requests = 0;
  let firstAt = 0;
  let lastAt = 0;
  let samples: string[] = [];
  /** While paused, requests wait here unanswered (the node's start-up stays out of the measure). */
  let gate: { promise: Promise<void>; resolve: () => void } | undefined;
  let waiting = 0;
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (path === "/stats") return Response.json({ events, requests, firstAt, lastAt, waiting });
      if (path === "/samples") return Response.json(samples);
      if (path === "/pause") {
        gate ??= Promise.withResolvers<void>();
        return new Response("ok");
      }
      if (path === "/resume") {
        gate?.resolve();
        gate = undefined;
        return new Response("ok");
      }
      if (path === "/reset") {
        events = requests = firstAt = lastAt = 0;
        samples = [];
        return new Response("ok");
      }
      const body = await req.text();
      if (gate) {
        waiting++;
        await gate.promise;
        waiting--;
      }
      const t = body.trimStart();
      // json-array, ndjson or one event: the count is all this receiver keeps.
      const n = t.startsWith("[") ? (JSON.parse(t) as unknown[]).length : t.split("\n").filter(Boolean).length;
      if (!firstAt) firstAt = performance.now();
      lastAt = performance.now();
      events += n;
      requests++;
      if (samples.length < 256) samples.push(body);
      return new Response('{"ok":true}', { headers: { "content-type": "application/json" } });
    },
  });
  console.log(JSON.stringify({ port: server.port }));
} else if (env.BENCH_EXPORT_ROLE === "ingest-node") {
  // A node that only ingests: started without a ClickHouse URL, its pipelines do not run (src/main.ts
  // would start a local clickhouse-server instead), but their consumers are created at start.
  const { optionsFromEnv } = await import("../src/config/env.ts");
  const { startNode } = await import("../src/node.ts");
  const o = optionsFromEnv();
  const node = await startNode({ ...o, clickhouseUrl: undefined, host: "127.0.0.1", port: 0, natsUrl: env.NATS_URL! });
  process.on("SIGTERM", () => void node.stop().then(() => process.exit(0)));
  console.log(JSON.stringify({ port: node.port }));
} else {
  await main();
}

/** The first line a child prints, as JSON (its port). */
async function firstLine<T>(
  proc: Subprocess<"ignore" | "pipe" | "inherit", "pipe", "inherit">,
  what: string,
): Promise<T> {
  const reader = proc.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${what} exited before listening`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return JSON.parse(text.slice(0, text.indexOf("\n"))) as T;
}

async function main(): Promise<void> {
  parseCommand({
    name: "bench:export",
    options: {},
    usage: `usage: npm run bench:export

An export pipeline draining a backlog to a local receiver that only counts, beside a bare loop
POSTing the same batches to the same receiver with fetch at the same concurrency. Starts its own
nats-server, clickhouse-server, receiver and node; prints a markdown table and one JSON line.
Exit 1 when the export lost events or the run broke.

  -h, --help   this help

Environment: EXPORT_EVENTS (200000), EXPORT_BATCH (500), EXPORT_IN_FLIGHT (4), EXPORT_USERS (10000),
EXPORT_FORMAT (json-array), EXPORT_CPU_PROF (a directory: profile the draining node there).`,
  });
  const EVENTS = num("EXPORT_EVENTS", 200_000);
  const BATCH = num("EXPORT_BATCH", 500);
  const IN_FLIGHT = num("EXPORT_IN_FLIGHT", 4);
  const USERS = num("EXPORT_USERS", 10_000);
  const FORMAT = env.EXPORT_FORMAT ?? "json-array";
  const CPU_PROF = env.EXPORT_CPU_PROF ? resolve(env.EXPORT_CPU_PROF) : undefined;
  const KEY = "bench-export-write-key";
  const say = (s: string) => process.stderr.write(`[export] ${s}\n`);

  const children = new Set<Subprocess>();
  const dir = mkdtempSync(join(tmpdir(), "tributary-export-"));
  process.on("exit", () => {
    for (const c of children) c.kill("SIGKILL");
    ManagedProcess.killAllSync();
    rmSync(dir, { recursive: true, force: true });
  });
  for (const s of ["SIGINT", "SIGTERM"] as const) process.on(s, () => process.exit(130));

  // ------------------------------------------------------------ CPU accounting (/proc)
  const CLK_TCK = 100;
  const cpuOf = (pid: number | undefined): number => {
    if (!pid) return 0;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return (Number(f[11]) + Number(f[12])) / CLK_TCK;
    } catch {
      return 0;
    }
  };
  /** A process and its descendants (the node's pipeline worker processes): their CPU seconds now. */
  const treeCpu = (root: number): number => {
    const parent = new Map<number, number>();
    for (const d of readdirSync("/proc")) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8");
        parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      } catch {}
    }
    const inTree = (pid: number): boolean => {
      for (let p: number | undefined = pid, hops = 0; p && hops < 64; p = parent.get(p), hops++)
        if (p === root) return true;
      return false;
    };
    let total = 0;
    for (const pid of parent.keys()) if (inTree(pid)) total += cpuOf(pid);
    return total;
  };
  type Cpu = { node: number; nats: number; clickhouse: number; receiver: number; bench: number };
  const cpuMeter = (pids: () => Omit<Cpu, "bench">) => {
    const p0 = pids();
    const b0 = process.cpuUsage();
    return (): Cpu => {
      const p1 = pids();
      const b = process.cpuUsage(b0);
      return {
        node: p1.node - p0.node,
        nats: p1.nats - p0.nats,
        clickhouse: p1.clickhouse - p0.clickhouse,
        receiver: p1.receiver - p0.receiver,
        bench: (b.user + b.system) / 1e6,
      };
    };
  };

  // ------------------------------------------------------------ services, receiver, node
  const nats = await LocalNats.create({ dataDir: join(dir, "nats") });
  const ch = await LocalClickHouse.create({ dataDir: join(dir, "clickhouse") });
  await Promise.all([nats.start(), ch.start()]);

  const receiverProc = Bun.spawn([process.execPath, import.meta.path], {
    env: { ...env, BENCH_EXPORT_ROLE: "receiver" },
    stdout: "pipe",
    stderr: "inherit",
  });
  children.add(receiverProc);
  const receiverUrl = `http://127.0.0.1:${(await firstLine<{ port: number }>(receiverProc, "the receiver")).port}`;
  const stats = async () =>
    (await (await fetch(`${receiverUrl}/stats`)).json()) as {
      events: number;
      requests: number;
      firstAt: number;
      lastAt: number;
      waiting: number;
    };

  const pipelines = join(dir, "pipelines");
  mkdirSync(pipelines);
  const yaml = `connection: bench
source: webhook
writeKeys: [${JSON.stringify(KEY)}]
pipelines:
  - name: to-receiver
    export: events
    destination:
      type: webhook
      url: ${receiverUrl}/in
      format: ${FORMAT}
      batch: {maxEvents: ${BATCH}, maxAgeMs: 200}
      maxInFlight: ${IN_FLIGHT}
      timeoutMs: 30000
`;
  writeFileSync(join(pipelines, "bench.yaml"), yaml);
  /** The node users run (`bun src/main.ts`) on a free port, pointed at this run's services. */
  const startNode = async () => {
    const port = await freePort();
    const prof = CPU_PROF ? ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${CPU_PROF}`] : [];
    const proc = Bun.spawn([process.execPath, ...prof, join(import.meta.dir, "../src/main.ts")], {
      env: {
        ...env,
        // Profiled, the pipelines run in the node's process, so the profile holds them.
        ...(CPU_PROF ? { TRIBUTARY_PIPELINE_WORKERS: "0" } : {}),
        LOG_LEVEL: env.LOG_LEVEL ?? "warn",
        HOST: "127.0.0.1",
        PORT: String(port),
        NATS_URL: nats.url,
        CLICKHOUSE_URL: ch.url,
        TRIBUTARY_PIPELINES: pipelines,
      },
      stdout: "inherit",
      stderr: "inherit",
    });
    children.add(proc);
    await waitForPort(port, 60_000, "127.0.0.1", () => proc.exitCode === null);
    return { proc, url: `http://127.0.0.1:${port}` };
  };
  /** This file as an ingest-only node (see BENCH_EXPORT_ROLE=ingest-node above). */
  const startIngestNode = async () => {
    const proc = Bun.spawn([process.execPath, import.meta.path], {
      env: {
        ...env,
        BENCH_EXPORT_ROLE: "ingest-node",
        LOG_LEVEL: env.LOG_LEVEL ?? "warn",
        NATS_URL: nats.url,
        TRIBUTARY_PIPELINES: pipelines,
      },
      stdout: "pipe",
      stderr: "inherit",
    });
    children.add(proc);
    const { port } = await firstLine<{ port: number }>(proc, "the ingest node");
    return { proc, url: `http://127.0.0.1:${port}` };
  };
  const stopNode = async (proc: Subprocess) => {
    proc.kill("SIGTERM");
    const t = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    await proc.exited;
    clearTimeout(t);
  };

  // ------------------------------------------------------------ 1. backlog, through an ingest-only node
  say(`backlog: ${EVENTS} events`);
  const ingestNode = await startIngestNode();
  const nodeUrl = ingestNode.url;
  const event = (i: number) => ({
    type: "track",
    event: "Order Completed",
    userId: `user-${i % USERS}`,
    messageId: `bench-export-${i}`,
    timestamp: new Date(Date.UTC(2026, 0, 1) + i).toISOString(),
    context: { library: { name: "bench", version: "1.0" }, locale: "en-GB", page: { path: "/checkout" } },
    properties: { orderId: `o-${i}`, revenue: (i % 997) / 10, currency: "EUR", items: i % 7 },
  });
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < EVENTS) {
        const from = next;
        next = Math.min(EVENTS, next + 1000);
        const batch = Array.from({ length: next - from }, (_, k) => event(from + k));
        const r = await fetch(`${nodeUrl}/v1/events`, {
          method: "POST",
          headers: { Authorization: `Bearer ${KEY}` },
          body: JSON.stringify(batch),
        });
        if (r.status !== 200) throw new Error(`ingest answered ${r.status}: ${await r.text()}`);
        await r.arrayBuffer();
      }
    }),
  );

  await stopNode(ingestNode.proc);

  // ------------------------------------------------------------ 2. a full node drains it
  say("export: a node with its pipelines drains the backlog");
  // Its first requests wait at the receiver until the node has started: start-up is not the export's cost.
  await fetch(`${receiverUrl}/pause`);
  const node = await startNode();
  const pids = () => ({
    node: treeCpu(node.proc.pid),
    nats: cpuOf(nats.pid),
    clickhouse: cpuOf(ch.pid),
    receiver: cpuOf(receiverProc.pid),
  });
  const deadline = Date.now() + 600_000;
  let s = await stats();
  while (!s.waiting && Date.now() < deadline) {
    await Bun.sleep(50);
    s = await stats();
  }
  await Bun.sleep(2000);
  const stopExportCpu = cpuMeter(pids);
  await fetch(`${receiverUrl}/resume`);
  let stalledSince = Date.now();
  let seen = 0;
  while (s.events < EVENTS && Date.now() < deadline) {
    await Bun.sleep(50);
    s = await stats();
    if (s.events !== seen) [seen, stalledSince] = [s.events, Date.now()];
    else if (Date.now() - stalledSince > 60_000) break;
  }
  const exportCpu = stopExportCpu();
  const exported = s;
  if (exported.events < EVENTS) say(`export delivered ${exported.events} of ${EVENTS} events`);
  const exportRate = (exported.events / (exported.lastAt - exported.firstAt)) * 1000;

  // ------------------------------------------------------------ 3. the bare loop, same bodies
  const samples = (await (await fetch(`${receiverUrl}/samples`)).json()) as string[];
  if (!samples.length) {
    say("the export sent nothing: no batches to compare with");
    process.exit(1);
  }
  await fetch(`${receiverUrl}/reset`);
  const count = (b: string) => {
    const t = b.trimStart();
    return t.startsWith("[") ? (JSON.parse(t) as unknown[]).length : t.split("\n").filter(Boolean).length;
  };
  const counts = samples.map(count);
  say(
    `bare: ${samples.length} sample bodies (${Math.round(counts.reduce((a, n) => a + n, 0) / samples.length)} events each)`,
  );
  const contentType = FORMAT === "ndjson" ? "application/x-ndjson" : "application/json";
  const stopBareCpu = cpuMeter(pids);
  let sent = 0;
  let k = 0;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (sent < EVENTS) {
        const i = k++ % samples.length;
        sent += counts[i]!;
        const r = await fetch(`${receiverUrl}/in`, {
          method: "POST",
          headers: { "content-type": contentType },
          body: samples[i]!,
        });
        await r.arrayBuffer();
      }
    }),
  );
  const bareCpu = stopBareCpu();
  const bare = await stats();
  const bareRate = (bare.events / (bare.lastAt - bare.firstAt)) * 1000;

  // ------------------------------------------------------------ report
  const us = (seconds: number, events: number) => ((seconds / events) * 1e6).toFixed(1);
  const cores = (seconds: number, span: number) => (seconds / span).toFixed(2);
  const row = (name: string, r: typeof exported, rate: number, cpu: Cpu, ratio: string) => {
    const span = (r.lastAt - r.firstAt) / 1000;
    const total = cpu.node + cpu.nats + cpu.clickhouse + cpu.receiver + cpu.bench;
    return `| ${name} | ${r.events.toLocaleString("en")} | ${r.requests} | ${Math.round(rate).toLocaleString("en")} | ${ratio} | ${us(cpu.node + cpu.nats + cpu.bench, r.events)} | ${us(cpu.receiver, r.events)} | ${us(total, r.events)} | ${cores(cpu.node, span)} / ${cores(cpu.nats, span)} / ${cores(cpu.receiver, span)} / ${cores(cpu.bench, span)} |`;
  };
  const ratio = exportRate / bareRate;
  console.log(`
Export pipeline vs a bare fetch loop: ${BATCH}-event batches (${FORMAT}), ${IN_FLIGHT} in flight, ${USERS} users, ${EVENTS} events

| phase | events | requests | events/s | vs bare | sender µs CPU/event | receiver µs/event | total µs/event | cores: node / nats / receiver / bench |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
${row("bare fetch loop", bare, bareRate, bareCpu, "100.0 %")}
${row("export pipeline", exported, exportRate, exportCpu, `${(ratio * 100).toFixed(1)} %`)}

Target ≥ 70 % of the bare loop: ${ratio >= 0.7 ? "PASS" : "FAIL"}. Sender CPU: the node and nats-server for the export,
the bench process (the fetch loop) for the bare phase.`);
  console.log(
    JSON.stringify({
      events: EVENTS,
      batch: BATCH,
      inFlight: IN_FLIGHT,
      users: USERS,
      format: FORMAT,
      export: { ...exported, rate: exportRate, cpu: exportCpu },
      bare: { ...bare, rate: bareRate, cpu: bareCpu },
      ratio,
    }),
  );
  await stopNode(node.proc);
  await Promise.all([nats.stop(), ch.kill()]);
  receiverProc.kill();
  process.exit(exported.events < EVENTS ? 1 : 0);
}
