/**
 * A Jepsen-style chaos run, shared by `bun run chaos` (scripts/chaos.ts) and the shortened run in
 * `npm test` (test/integration/chaos.test.ts).
 *
 * Two Tributary nodes (separate processes) share one NATS JetStream server and one ClickHouse;
 * one connection has one `import: events` pipeline. Several clients post batches of events with
 * unique messageIds (retrying refused batches with the same ids) while a seeded schedule
 * SIGKILLs and restarts NATS, ClickHouse and one of the nodes, SIGSTOPs them for a while, and
 * fills the stream's byte limit (TRIBUTARY_STREAM_MAX_BYTES) by holding ClickHouse until the
 * unloaded events reach it. At the end the load stops, the pipeline drains, and every messageId
 * that got a 2xx is looked up in `tributary.events FINAL`: none may be missing, none twice.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { ClickHouseClient } from "@clickhouse/client";
import { startClickHouse, startNats, tempDir } from "./services.ts";
import { chClient } from "./warehouse.ts";
import { ChaosNode } from "./chaos-node.ts";
import { ChaosLoad, type Attempt } from "./chaos-load.ts";
import { STREAM, connectionSubjects } from "../../src/bus/subjects.ts";
import { IDS_HEADER } from "../../src/bus/shard-writer.ts";
import { DLQ_STREAM } from "../../src/bus/dead-letters.ts";
import { durableName } from "../../src/pipeline/worker.ts";

/** The back-pressure guard's 503 text (src/node.ts), as opposed to JetStream refusing a write. */
export const GUARD_503 = "the event stream is nearly full of events not yet loaded into ClickHouse; retry later";

/** A process's state letter from /proc (R, S, D, T, Z, ...), undefined when it is gone. */
function procState(pid: number | undefined): string | undefined {
  if (!pid) return undefined;
  try {
    return /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1];
  } catch {
    return undefined;
  }
}
/** The process that had `pid` is gone (or a zombie nobody reaped yet). */
const killed = (pid: number | undefined) => pid !== undefined && [undefined, "Z", "X"].includes(procState(pid));
/** The process is stopped; SIGSTOP takes effect asynchronously, so look for up to a second. */
async function stopped(pid: number | undefined): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    if (procState(pid) === "T") return true;
    await Bun.sleep(50);
  }
  return false;
}

export const FAULT_KINDS = [
  "nats-kill",
  "nats-pause",
  "clickhouse-kill",
  "clickhouse-pause",
  "node-kill",
  "node-pause",
  "stream-full",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface ChaosOptions {
  /** Length of the fault schedule (the first round, one fault of each kind, always runs in full). */
  seconds: number;
  seed: number;
  /** Shorter faults and pauses (the `npm test` run). */
  short?: boolean;
  clients?: number;
  eventsPerRequest?: number;
  pauseMs?: number;
  /** The events stream's byte limit given to the nodes. */
  streamMaxBytes?: number;
  /** How long the final drain may take. */
  drainTimeoutMs?: number;
  /** Progress lines (stderr in the script). */
  log?: (line: string) => void;
  /** Keep the temporary directories (service and node logs) for inspection. */
  keep?: boolean;
}

export interface ChaosStep {
  index: number;
  kind: FaultKind | "steady" | "cool-down";
  /** What was done, with its parameters. */
  label: string;
  /** ms since the load started. */
  start: number;
  /** When the fault was lifted (service restarted or resumed). */
  lifted: number;
  end: number;
  /** Node a node fault hit. */
  node?: string;
  /** From the fault being lifted to the first 2xx of a request started after it (from the hit node for node faults). */
  backToOkMs?: number;
  note?: string;
  /** Per-step answer counts, filled in at the end. */
  requests: number;
  ok: number;
  s429: number;
  s503: number;
  other: number;
  noAnswer: number;
  /** Of the 503s, those from the back-pressure guard (its own error text), not from JetStream. */
  s503guard: number;
  /**
   * The fault was seen in effect, not only scheduled: a killed process was gone (or a zombie) in
   * /proc, a paused one was stopped (state T), a full stream drew the guard's 503.
   */
  applied?: boolean;
  /** Slowest answered request (any status) whose answer came during the step, ms. */
  slowestMs: number;
}

export interface ChaosResult {
  seed: number;
  seconds: number;
  steps: ChaosStep[];
  totals: Pick<ChaosStep, "requests" | "ok" | "s429" | "s503" | "s503guard" | "other" | "noAnswer">;
  /** Distinct reasons in refusals (status + error text) and how often. */
  refusals: Record<string, number>;
  sentEvents: number;
  accepted: number;
  unconfirmed: number;
  abandonedBatches: number;
  retriedOk: number;
  inClickHouse: number;
  rowsBeforeFinal: number;
  missing: number;
  missingSample: string[];
  /** Where the missing events were accepted: step, node, and whether the stream still holds them. */
  missingDiagnosis: string[];
  duplicated: number;
  duplicatedSample: string[];
  /** Stored ids that never got a 2xx (their request was refused or cut): allowed, reported. */
  extra: number;
  /** Stored ids that were never sent: impossible unless something is very wrong. */
  phantom: number;
  /** In JetStream: accepted ids found, and ids stored in more than one message. */
  streamHolds: number;
  streamDuplicated: number;
  streamDuplicatedSample: string[];
  streamFirstSeq: number;
  /** Messages the full stream discarded before the pipeline loaded them (lost if no node holds them). */
  unackedDiscards: number;
  deadLettered: number;
  anomalies: string[];
  drainMs: number;
  drained: boolean;
  /** The consumer and row count at the last drain poll. */
  drainState: string;
  /** missing == 0, duplicated == 0, no phantom, no anomaly. */
  ok: boolean;
  elapsedMs: number;
  dirs: string[];
}

/** mulberry32: a small seeded PRNG, so a schedule can be replayed from its seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CONNECTION = "chaos";
const PIPELINE = "all";
const WRITE_KEY = "key-chaos-000001";

const connectionYaml = `connection: ${CONNECTION}
source: webhook
writeKeys: ["${WRITE_KEY}"]
pipelines:
  - name: ${PIPELINE}
    import: events
`;

const fmtS = (ms: number) => (ms / 1000).toFixed(1);

export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const log = o.log ?? (() => {});
  const short = !!o.short;
  const random = rng(o.seed);
  const between = (lo: number, hi: number) => Math.round(lo + (hi - lo) * random());
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const began = performance.now();
  const streamMaxBytes = o.streamMaxBytes ?? 8 * 1024 * 1024;

  const [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  const work = tempDir("chaos");
  const pipelines = join(work, "pipelines");
  mkdirSync(pipelines, { recursive: true });
  writeFileSync(join(pipelines, "chaos.yaml"), connectionYaml);
  const env = {
    NATS_URL: nats.url,
    CLICKHOUSE_URL: ch.url,
    TRIBUTARY_PIPELINES: pipelines,
    TRIBUTARY_BATCH_MAX_AGE_MS: "300",
    // A dead or frozen node's unacknowledged batch comes back to the other node after 3 s.
    TRIBUTARY_ACK_WAIT_MS: "3000",
    TRIBUTARY_PUBLISH_TIMEOUT_MS: "2000",
    TRIBUTARY_STREAM_MAX_BYTES: String(streamMaxBytes),
  };
  const nodes = [
    new ChaosNode("node-a", env, join(work, "node-a.log")),
    new ChaosNode("node-b", env, join(work, "node-b.log")),
  ];
  let db: ClickHouseClient | undefined;
  let nc: NatsConnection | undefined;
  let load: ChaosLoad | undefined;
  const dirs = [nats.dataDir, ch.dataDir, work];
  try {
    // One node first: it creates the stream and the consumer; then the second joins.
    await nodes[0]!.start();
    await nodes[0]!.ready(60_000);
    await nodes[1]!.start();
    await nodes[1]!.ready(60_000);
    db = chClient(ch.url);
    nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250, name: "chaos-checker" });
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    log(
      `chaos: seed ${o.seed}, ${o.seconds} s of faults${short ? " (short)" : ""}; NATS ${nats.url}, ClickHouse ${ch.url}, nodes ${nodes.map((n) => n.url).join(" ")}; logs in ${work}`,
    );

    load = new ChaosLoad({
      targets: () => nodes.filter((n) => n.state !== "down").map((n) => ({ name: n.name, url: n.url })),
      writeKey: WRITE_KEY,
      clients: o.clients ?? 8,
      eventsPerRequest: o.eventsPerRequest ?? 20,
      pauseMs: o.pauseMs ?? 20,
      maxAttempts: 4,
      timeoutMs: 8000,
      prefix: `chaos${o.seed}`,
    });
    const L = load;
    const steps: ChaosStep[] = [];
    const blank = { requests: 0, ok: 0, s429: 0, s503: 0, s503guard: 0, other: 0, noAnswer: 0 };
    const zero = { ...blank, slowestMs: 0 };
    const begin = (kind: ChaosStep["kind"], label: string, node?: string): ChaosStep => {
      const s: ChaosStep = { index: steps.length, kind, label, start: L.now(), lifted: 0, end: 0, node, ...zero };
      steps.push(s);
      log(`[${fmtS(s.start).padStart(6)} s] #${s.index} ${label}`);
      return s;
    };
    /** The first 2xx of a request started at or after `since` (from `node` when given). */
    const firstOkAfter = (since: number, node?: string): Attempt | undefined => {
      // Attempts are recorded in the order their answers came.
      let best: Attempt | undefined;
      for (let i = L.attempts.length - 1; i >= 0; i--) {
        const a = L.attempts[i]!;
        if (a.at < since) break;
        if (a.status >= 200 && a.status < 300 && a.at - a.ms >= since && (!node || a.target === node)) best = a;
      }
      return best;
    };
    const waitOk = async (since: number, node: string | undefined, timeoutMs: number) => {
      const deadline = L.now() + timeoutMs;
      while (L.now() < deadline) {
        const a = firstOkAfter(since, node);
        if (a) return a.at - since;
        await Bun.sleep(100);
      }
      return undefined;
    };
    const finish = async (s: ChaosStep) => {
      s.lifted ||= L.now();
      // Acceptance must come back; how fast is reported, not judged (30 s is 10× what it takes).
      const patience = 30_000;
      const back = await waitOk(s.lifted, s.node, patience);
      s.backToOkMs = back;
      if (back === undefined)
        s.note = [s.note, `**no 2xx within ${patience / 1000} s after the fault was lifted**`]
          .filter(Boolean)
          .join("; ");
      await Bun.sleep(short ? between(400, 900) : between(1000, 3000));
      s.end = L.now();
    };

    const steady = begin("steady", "steady load, no fault");
    await Bun.sleep(short ? 1500 : 3000);
    steady.lifted = L.now();
    steady.end = L.now();

    const run = async (kind: FaultKind) => {
      switch (kind) {
        case "nats-kill": {
          const down = short ? between(500, 1500) : between(1000, 3000);
          const s = begin(kind, `kill -9 NATS, restart after ${fmtS(down)} s`);
          const pid = nats.pid;
          await nats.kill();
          s.applied = killed(pid);
          await Bun.sleep(down);
          await nats.start();
          return finish(s);
        }
        case "nats-pause": {
          const d = short ? between(1000, 2500) : between(2000, 5000);
          const s = begin(kind, `SIGSTOP NATS for ${fmtS(d)} s`);
          nats.pause();
          const slept = Bun.sleep(d);
          s.applied = await stopped(nats.pid);
          await slept;
          nats.resume();
          return finish(s);
        }
        case "clickhouse-kill": {
          const down = short ? between(500, 2000) : between(2000, 5000);
          const s = begin(kind, `kill -9 ClickHouse, restart after ${fmtS(down)} s`);
          const pid = ch.pid;
          await ch.kill();
          s.applied = killed(pid);
          await Bun.sleep(down);
          await ch.start();
          s.note = `ClickHouse answered again ${fmtS(L.now() - s.start - down)} s after its restart began`;
          return finish(s);
        }
        case "clickhouse-pause": {
          const d = short ? between(1000, 3000) : between(3000, 6000);
          const s = begin(kind, `SIGSTOP ClickHouse for ${fmtS(d)} s`);
          ch.pause();
          const slept = Bun.sleep(d);
          s.applied = await stopped(ch.pid);
          await slept;
          ch.resume();
          return finish(s);
        }
        case "node-kill": {
          const n = pick(nodes);
          const down = short ? between(300, 1000) : between(500, 3000);
          const s = begin(kind, `kill -9 ${n.name}, restart after ${fmtS(down)} s`, n.name);
          const pid = n.pid;
          await n.kill();
          s.applied = killed(pid);
          await Bun.sleep(down);
          await n.start();
          return finish(s);
        }
        case "node-pause": {
          const n = pick(nodes);
          const d = short ? between(1000, 3500) : between(2000, 5000);
          const s = begin(kind, `SIGSTOP ${n.name} for ${fmtS(d)} s`, n.name);
          n.pause();
          const slept = Bun.sleep(d);
          s.applied = await stopped(n.pid);
          await slept;
          n.resume();
          return finish(s);
        }
        case "stream-full": {
          // Hold the pipeline (ClickHouse frozen) while load goes on, until the unloaded events
          // reach the stream's limit and the nodes refuse with 503; while it is full, kill -9 one
          // node (it holds delivered, unloaded batches); then let ClickHouse go and the stream drain.
          const n = pick(nodes);
          const hold = short ? 1000 : between(2000, 4000);
          const s = begin(
            kind,
            `fill the stream (${(streamMaxBytes / 1048576).toFixed(0)} MiB limit): ClickHouse frozen until 503s, kill -9 ${n.name} while full, ClickHouse back ${fmtS(hold)} s later`,
          );
          ch.pause();
          // A condition, not a measure: as long as the fill takes on a busy machine.
          const fillTimeout = 60_000;
          const t0 = L.now();
          const watch = new StreamWatch(jsm, () => L.now());
          await watch.begin();
          let refused: Attempt | undefined;
          while (L.now() - t0 < fillTimeout) {
            // The guard's own 503, not JetStream refusing (or timing out) a write.
            refused = L.attempts.find((a) => a.at >= t0 && a.status === 503 && a.reason?.includes(GUARD_503));
            if (refused) break;
            await watch.sample();
            await Bun.sleep(100);
          }
          await watch.sample();
          const full = watch.last;
          await n.kill();
          await Bun.sleep(500);
          await n.start();
          const holdUntil = L.now() + hold;
          while (L.now() < holdUntil) {
            await watch.sample();
            await Bun.sleep(100);
          }
          ch.resume();
          s.lifted = L.now();
          s.node = undefined;
          s.applied = refused !== undefined;
          s.note = `${refused ? `first guard 503 after ${fmtS(refused.at - t0)} s` : `no guard 503 within ${fmtS(fillTimeout)} s`}; stream then held ${full}`;
          if (watch.discardedUnacked > 0) {
            const lead = refused && watch.firstDiscardAt !== undefined ? refused.at - watch.firstDiscardAt : 0;
            const before = lead >= 100 ? `, from ${fmtS(lead)} s before the first 503` : "";
            s.note += `; **the full stream discarded at least ${watch.discardedUnacked} messages the pipeline had not loaded${before}**`;
            unackedDiscards += watch.discardedUnacked;
          }
          return finish(s);
        }
      }
    };

    let unackedDiscards = 0;
    const faultsFrom = L.now();
    const firstRound = [...FAULT_KINDS];
    for (let i = firstRound.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [firstRound[i], firstRound[j]] = [firstRound[j]!, firstRound[i]!];
    }
    for (const kind of firstRound) await run(kind);
    while (L.now() - faultsFrom < o.seconds * 1000) await run(pick(FAULT_KINDS));

    const cool = begin("cool-down", "steady load, no fault");
    await Bun.sleep(short ? 1000 : 3000);
    cool.lifted = L.now();
    await L.stop();
    cool.end = L.now();
    log(`[${fmtS(L.now()).padStart(6)} s] load stopped; waiting for the pipeline to drain`);

    // Attribute every request to the step during which its answer came.
    for (const a of L.attempts) {
      let s = steps[0]!;
      for (const x of steps) if (x.start <= a.at) s = x;
      s.requests++;
      if (a.status >= 200 && a.status < 300) s.ok++;
      else if (a.status === 429) s.s429++;
      else if (a.status === 503) {
        s.s503++;
        if (a.reason?.includes(GUARD_503)) s.s503guard++;
      } else if (a.status === 0) s.noAnswer++;
      else s.other++;
      if (a.status !== 0 && a.ms > s.slowestMs) s.slowestMs = a.ms;
    }
    const totals = { ...blank };
    for (const s of steps) for (const k of Object.keys(blank) as (keyof typeof blank)[]) totals[k] += s[k];

    // Drain: the consumer has nothing pending or unacknowledged, and the row count stopped moving.
    for (const n of nodes) if (n.state === "paused") n.resume();
    const drainFrom = performance.now();
    const drainTimeout = o.drainTimeoutMs ?? 120_000;
    let drained = false;
    let lastCount = -1;
    let drainState = "";
    while (performance.now() - drainFrom < drainTimeout) {
      try {
        const c = await jsm.consumers.info(STREAM, durableName(CONNECTION, PIPELINE));
        const count = await countFinal(db);
        drainState = `consumer: ${c.num_pending} pending, ${c.num_ack_pending} unacknowledged (ack floor ${c.ack_floor.stream_seq}, delivered ${c.delivered.stream_seq}); ${count} events in FINAL`;
        // Messages are acknowledged only after ClickHouse confirmed their rows: nothing pending or
        // unacknowledged means everything the stream still holds is loaded.
        if (c.num_pending === 0 && c.num_ack_pending === 0 && count === lastCount) {
          drained = true;
          break;
        }
        lastCount = count;
      } catch {}
      await Bun.sleep(500);
    }
    const drainMs = performance.now() - drainFrom;
    log(`drain ${drained ? "done" : "timed out"} after ${fmtS(drainMs)} s (${drainState}); comparing`);

    // The comparison.
    const stored = await storedIds(db);
    const accepted = new Set(L.accepted);
    const sent = new Set<string>([...accepted, ...L.unconfirmed]);
    const missing = L.accepted.filter((id) => !stored.has(id));
    const duplicated = [...stored].filter(([, n]) => n > 1).map(([id]) => id);
    let extra = 0;
    let phantom = 0;
    for (const id of stored.keys()) {
      if (accepted.has(id)) continue;
      if (sent.has(id)) extra++;
      else phantom++;
    }
    const rowsBeforeFinal = Number(
      (
        await (
          await db.query({
            query: `SELECT count() FROM tributary.events WHERE connection = '${CONNECTION}'`,
            format: "TabSeparated",
          })
        ).text()
      ).trim(),
    );
    const stream = await streamIds(nc, jsm);
    let streamHolds = 0;
    for (const id of accepted) if (stream.ids.has(id)) streamHolds++;
    const streamDuplicated = [...stream.ids].filter(([, n]) => n > 1).map(([id]) => id);
    const deadLettered = await countDeadLetters(nc, jsm);
    // Place each missing event's batch in the schedule.
    const missingDiagnosis: string[] = [];
    if (missing.length) {
      const byBatch = new Map<string, { n: number; inStream: number }>();
      for (const id of missing) {
        const [prefix, c, q] = id.split("-");
        const first = Number(q) - (Number(q) % (o.eventsPerRequest ?? 20));
        const key = `${prefix}-${c}-${first}`;
        const b = byBatch.get(key) ?? { n: 0, inStream: 0 };
        b.n++;
        if (stream.ids.has(id)) b.inStream++;
        byBatch.set(key, b);
      }
      const groups = new Map<string, { batches: number; events: number; inStream: number; from: number; to: number }>();
      for (const [key, b] of byBatch) {
        const a = L.acceptedBatches.get(key);
        const step = a ? [...steps].reverse().find((x) => x.start <= a.at) : undefined;
        const g = `step #${step?.index ?? "?"} (${step?.label ?? "?"}), accepted by ${a?.target ?? "?"}${a && a.attempt > 1 ? " on a retry" : ""}`;
        const x = groups.get(g) ?? { batches: 0, events: 0, inStream: 0, from: Infinity, to: 0 };
        x.batches++;
        x.events += b.n;
        x.inStream += b.inStream;
        if (a) {
          x.from = Math.min(x.from, a.at);
          x.to = Math.max(x.to, a.at);
        }
        groups.set(g, x);
      }
      for (const [g, x] of groups)
        missingDiagnosis.push(
          `${x.events} events in ${x.batches} batches answered 2xx at ${fmtS(x.from)}–${fmtS(x.to)} s, ${g}; ${x.inStream} of them still in the stream`,
        );
    }
    const refusals: Record<string, number> = {};
    for (const [k, v] of L.reasons) refusals[k] = v;

    const result: ChaosResult = {
      seed: o.seed,
      seconds: o.seconds,
      steps,
      totals,
      refusals,
      sentEvents: sent.size,
      accepted: accepted.size,
      unconfirmed: L.unconfirmed.size,
      abandonedBatches: L.abandoned,
      retriedOk: L.retriedOk,
      inClickHouse: stored.size,
      rowsBeforeFinal,
      missing: missing.length,
      missingSample: missing.slice(0, 10),
      missingDiagnosis,
      duplicated: duplicated.length,
      duplicatedSample: duplicated.slice(0, 10),
      extra,
      phantom,
      streamHolds,
      streamDuplicated: streamDuplicated.length,
      streamDuplicatedSample: streamDuplicated.slice(0, 10),
      streamFirstSeq: stream.firstSeq,
      unackedDiscards,
      deadLettered,
      anomalies: L.anomalies.slice(0, 20),
      drainMs,
      drained,
      drainState,
      ok:
        missing.length === 0 &&
        duplicated.length === 0 &&
        phantom === 0 &&
        L.anomalies.length === 0 &&
        accepted.size === L.accepted.length,
      elapsedMs: performance.now() - began,
      dirs,
    };
    return result;
  } finally {
    await load?.stop().catch(() => {});
    for (const n of nodes) await n.stop().catch(() => {});
    await db?.close().catch(() => {});
    await nc?.close().catch(() => {});
    nats.resume();
    ch.resume();
    if (o.keep) {
      await Promise.all([nats.stop(), ch.stop()]);
    } else {
      await Promise.all([nats.cleanup(), ch.cleanup()]);
      rmSync(work, { recursive: true, force: true });
    }
  }
}

async function countFinal(db: ClickHouseClient): Promise<number> {
  const r = await db.query({
    query: `SELECT count() FROM tributary.events FINAL WHERE connection = '${CONNECTION}'`,
    format: "TabSeparated",
  });
  return Number((await r.text()).trim());
}

/** messageId → rows under FINAL. */
async function storedIds(db: ClickHouseClient): Promise<Map<string, number>> {
  const r = await db.query({
    query: `SELECT message_id FROM tributary.events FINAL WHERE connection = '${CONNECTION}'`,
    format: "TabSeparated",
  });
  const out = new Map<string, number>();
  for (const id of (await r.text()).split("\n")) if (id) out.set(id, (out.get(id) ?? 0) + 1);
  return out;
}

/**
 * Watches the stream while ClickHouse is frozen: how full it is, and whether it discarded
 * (max_bytes, DiscardOld) messages the pipeline had not loaded. At the freeze, `u` messages up
 * to sequence `last` are unacknowledged, and none can be acknowledged while ClickHouse is frozen;
 * once the stream's first sequence is past d + 1, at least d − (last − u) of them are gone. (The
 * consumer's ack floor cannot be used: the server drags it along as it discards, and after a
 * NATS restart it reads 1.)
 */
class StreamWatch {
  last = "(no sample)";
  /** At least this many unloaded messages were discarded; when the first was seen (ms, load clock). */
  discardedUnacked = 0;
  firstDiscardAt?: number;
  #last0 = -1;
  #unloaded0 = 0;
  constructor(
    readonly jsm: JetStreamManager,
    readonly now: () => number,
  ) {}
  async begin(): Promise<void> {
    await Bun.sleep(200);
    try {
      const [i, c] = await Promise.all([
        this.jsm.streams.info(STREAM),
        this.jsm.consumers.info(STREAM, durableName(CONNECTION, PIPELINE)),
      ]);
      this.#last0 = i.state.last_seq;
      this.#unloaded0 = c.num_pending + c.num_ack_pending;
    } catch {}
  }
  async sample(): Promise<void> {
    try {
      const [i, c] = await Promise.all([
        this.jsm.streams.info(STREAM),
        this.jsm.consumers.info(STREAM, durableName(CONNECTION, PIPELINE)),
      ]);
      const mib = (b: number) => (b / 1048576).toFixed(1);
      this.last = `${mib(i.state.bytes)} MiB in ${i.state.messages} messages (from sequence ${i.state.first_seq}), ${c.num_pending + c.num_ack_pending} not yet loaded`;
      if (this.#last0 < 0) return;
      const gone = i.state.first_seq - 1 - (this.#last0 - this.#unloaded0);
      if (gone > 0 && this.firstDiscardAt === undefined) this.firstDiscardAt = this.now();
      if (gone > this.discardedUnacked) this.discardedUnacked = gone;
    } catch {}
  }
}

/** messageId → how many JetStream messages hold it, read from the id headers of the connection's subjects. */
async function streamIds(
  nc: NatsConnection,
  jsm: JetStreamManager,
): Promise<{ ids: Map<string, number>; firstSeq: number }> {
  const ids = new Map<string, number>();
  const subject = connectionSubjects(CONNECTION);
  const info = await jsm.streams.info(STREAM, { subjects_filter: subject });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, n) => a + (n as number), 0);
  if (total === 0) return { ids, firstSeq: info.state.first_seq };
  const js = jetstream(nc, { timeout: 10_000 });
  const c = await js.consumers.get(STREAM, {
    filter_subjects: subject,
    headers_only: true,
    deliver_policy: DeliverPolicy.All,
  });
  const messages = await c.consume({ max_messages: 2000 });
  let seen = 0;
  const t = setTimeout(() => messages.stop(), 120_000);
  for await (const m of messages) {
    const h = m.headers?.get(IDS_HEADER);
    if (h) for (const id of JSON.parse(h) as string[]) ids.set(id, (ids.get(id) ?? 0) + 1);
    if (++seen >= total) break;
  }
  clearTimeout(t);
  messages.stop();
  return { ids, firstSeq: info.state.first_seq };
}

async function countDeadLetters(nc: NatsConnection, jsm: JetStreamManager): Promise<number> {
  try {
    const info = await jsm.streams.info(DLQ_STREAM, { subjects_filter: `tributary.dlq.${CONNECTION}.>` });
    return Object.values(info.state.subjects ?? {}).reduce((a, n) => a + (n as number), 0);
  } catch {
    return 0;
  }
}

const n = (v: number) => v.toLocaleString("en-US");

/** The per-step table and the verdict, as markdown. */
export function formatChaos(r: ChaosResult): string {
  const lines: string[] = [];
  lines.push(`Seed ${r.seed}, ${r.seconds} s of faults, ${fmtS(r.elapsedMs)} s in all (set-up, faults, drain, check).`);
  lines.push("");
  lines.push("| # | at s | fault | requests | 2xx | 429 | 503 | no answer | slowest answer | 2xx again after | note |");
  lines.push("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
  for (const s of r.steps) {
    const back =
      s.kind === "steady" || s.kind === "cool-down"
        ? ""
        : s.backToOkMs === undefined
          ? "never"
          : `${fmtS(s.backToOkMs)} s`;
    lines.push(
      `| ${s.index} | ${fmtS(s.start)} | ${s.label} | ${n(s.requests)} | ${n(s.ok)} | ${n(s.s429)} | ${n(s.s503)}${s.s503guard ? ` (guard ${n(s.s503guard)})` : ""} | ${n(s.noAnswer)}${s.other ? ` (+${s.other} other)` : ""} | ${fmtS(s.slowestMs)} s | ${back} | ${[s.applied === false ? "**fault not seen in effect**" : "", s.note ?? ""].filter(Boolean).join("; ")} |`,
    );
  }
  const t = r.totals;
  lines.push(
    `| | | **total** | **${n(t.requests)}** | **${n(t.ok)}** | **${n(t.s429)}** | **${n(t.s503)}**${t.s503guard ? ` (guard ${n(t.s503guard)})` : ""} | **${n(t.noAnswer)}**${t.other ? ` (+${t.other} other)` : ""} | ${fmtS(Math.max(...r.steps.map((s) => s.slowestMs)))} s | | |`,
  );
  lines.push("");
  const refusals = Object.entries(r.refusals).sort((a, b) => b[1] - a[1]);
  if (refusals.length) {
    lines.push("Refusals by reason: " + refusals.map(([k, v]) => `${n(v)} × ${k}`).join("; ") + ".");
    lines.push("");
  }
  const row = (what: string, v: number | string, verdict = "") =>
    lines.push(`| ${what} | ${typeof v === "number" ? n(v) : v} | ${verdict} |`);
  lines.push("| check | events | |");
  lines.push("| --- | ---: | --- |");
  row("sent (unique messageIds)", r.sentEvents);
  row("accepted (answered 2xx)", r.accepted, `${n(r.retriedOk)} batches only on a retry`);
  row(
    "never confirmed (refused or unanswered, retries exhausted or load stopped)",
    r.unconfirmed,
    `${n(r.abandonedBatches)} batches given up`,
  );
  row("in `tributary.events FINAL`", r.inClickHouse);
  row(
    "**missing** (accepted, not in FINAL)",
    r.missing,
    r.missing ? `**FAIL** e.g. ${r.missingSample.slice(0, 3).join(", ")}` : "ok",
  );
  row(
    "**duplicated** (more than once in FINAL)",
    r.duplicated,
    r.duplicated ? `**FAIL** e.g. ${r.duplicatedSample.slice(0, 3).join(", ")}` : "ok",
  );
  row("extra (stored, never confirmed: the request was refused or cut after the write)", r.extra, "allowed");
  row("phantom (stored, never sent)", r.phantom, r.phantom ? "**FAIL**" : "ok");
  row(
    "stored in JetStream more than once",
    r.streamDuplicated,
    r.streamDuplicated ? `README promises once; e.g. ${r.streamDuplicatedSample.slice(0, 3).join(", ")}` : "ok",
  );
  row(
    "accepted ids still in the stream",
    r.streamHolds,
    r.streamFirstSeq > 1 ? `stream starts at sequence ${n(r.streamFirstSeq)} (older messages discarded)` : "",
  );
  row(
    "stream messages discarded before they were loaded (stream full; a lower bound)",
    r.unackedDiscards,
    r.unackedDiscards ? "a near miss at best: only a node still holding them in memory can load them" : "ok",
  );
  row(
    "rows before FINAL (redelivered batches collapse)",
    r.rowsBeforeFinal,
    `${n(r.rowsBeforeFinal - r.inClickHouse)} collapsed`,
  );
  row("dead-lettered", r.deadLettered, r.deadLettered ? "rows ClickHouse refused for their content" : "");
  row("drain after the load stopped", `${fmtS(r.drainMs)} s`, r.drained ? "" : `**did not settle**: ${r.drainState}`);
  if (r.missingDiagnosis.length) {
    lines.push("");
    lines.push("Where the missing events were accepted:");
    for (const d of r.missingDiagnosis) lines.push(`- ${d}`);
  }
  if (r.anomalies.length) {
    lines.push("");
    lines.push("Anomalies (2xx answers that did not accept every event):");
    for (const a of r.anomalies) lines.push(`- ${a}`);
  }
  lines.push("");
  lines.push(
    r.ok
      ? "**PASS**: every accepted event is in ClickHouse exactly once."
      : "**FAIL**: see missing / duplicated / phantom above.",
  );
  return lines.join("\n");
}
