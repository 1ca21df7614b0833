/**
 * npm run bench:dedup — the dedup index of one shard subject (issue 22): today's IdIndex (64-bit
 * hash and sequence per id) against the FingerprintIndex (16-bit fingerprint and 12-bit block),
 * in the same run, at 10M and 50M ids.
 *
 * In memory, per index and size: bytes per id (the structure's own size, and the growth of this
 * process's heap plus array buffers after a full GC), insertions/s, lookups/s of ids present and
 * of new ids, and how many new ids match a fingerprint (each costs a confirmation read).
 *
 * Restart, per size, against a nats-server of its own: the subject filled with the ids (messages
 * of BENCH_DEDUP_IDS_PER_MESSAGE ids), then the time until a writer is ready to deduplicate:
 *  - today: every id's header read from the stream into an IdIndex;
 *  - without a snapshot: the same read into the FingerprintIndex (the fallback);
 *  - from a snapshot: the snapshot loaded and only the tail after it read (BENCH_DEDUP_TAIL of the
 *    ids, stored after the snapshot). Target: ≤ 10 s whatever the window holds.
 *
 * Env: BENCH_DEDUP_SIZES (default "10000000,50000000"), BENCH_DEDUP_RESTART (1; 0 skips the
 * nats part), BENCH_DEDUP_IDS_PER_MESSAGE (100), BENCH_DEDUP_TAIL (0.01), BENCH_DEDUP_LOOKUPS (2000000).
 */
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { headers } from "@nats-io/nats-core";
import { DeliverPolicy } from "@nats-io/jetstream";
import { connectBus, type Bus } from "../src/bus/connection.ts";
import { FingerprintIndex } from "../src/bus/fingerprint-index.ts";
import { IdIndex } from "../src/bus/id-index.ts";
import { IDS_HEADER, ShardWriter } from "../src/bus/shard-writer.ts";
import { STREAM, shardSubject } from "../src/bus/subjects.ts";
import { KIND_HEADER } from "../src/event/envelope.ts";
import { LocalNats } from "../src/services/nats-server.ts";
import { parseCommand } from "../scripts/cli.ts";

parseCommand({
  name: "bench:dedup",
  options: {},
  usage: `usage: npm run bench:dedup

The dedup index of one shard subject, today's IdIndex against the FingerprintIndex, at 10M and
50M ids: bytes per id, insertions/s, lookups/s, false matches, and the time to be ready after a
restart (full read; snapshot + tail).

  -h, --help   this help

Environment: BENCH_DEDUP_SIZES ("10000000,50000000"), BENCH_DEDUP_RESTART (1), BENCH_DEDUP_IDS_PER_MESSAGE (100),
BENCH_DEDUP_TAIL (0.01), BENCH_DEDUP_LOOKUPS (2000000).`,
});

const SIZES = (process.env.BENCH_DEDUP_SIZES ?? "10000000,50000000").split(",").map(Number);
const RESTART = process.env.BENCH_DEDUP_RESTART !== "0";
const PER_MESSAGE = Number(process.env.BENCH_DEDUP_IDS_PER_MESSAGE ?? 100);
const TAIL = Number(process.env.BENCH_DEDUP_TAIL ?? 0.01);
const LOOKUPS = Number(process.env.BENCH_DEDUP_LOOKUPS ?? 2_000_000);
const WINDOW = 24 * 3600_000;

/** A UUID-shaped id (36 characters, as SDKs send), distinct per i and prefix. */
function idOf(i: number, prefix = "0"): string {
  const h = (i >>> 0).toString(16).padStart(8, "0");
  const x = (Math.imul(i, 0x9e3779b1) >>> 0).toString(16).padStart(8, "0");
  return `${h}-${x.slice(0, 4)}-4${prefix.padStart(3, "0")}-8${x.slice(4, 7)}-${h}${x.slice(0, 4)}`;
}

const gc = () => {
  Bun.gc(true);
  const m = process.memoryUsage();
  return { heap: m.heapUsed + m.arrayBuffers, rss: m.rss };
};
const rate = (n: number, ms: number) => `${(((n / ms) * 1000) / 1e6).toFixed(2)}M/s`;
const fmt = (n: number, d = 2) => n.toFixed(d);

interface AnyIndex {
  add(id: string, seq: number): void;
  lookup(id: string): unknown;
  readonly size: number;
  readonly bytes: number;
}

/**
 * Steady traffic: ids arrive evenly, `n` per window, for 1.25 windows: every generation's table
 * is then at the load it was sized for (the first one's, sized during the ramp-up, among them).
 * Then one id more starts the next generation, whose table is allocated for a quarter window at
 * once: the most the index ever holds per id (a saw-tooth between the two).
 */
function inMemory(name: string, make: (now: () => number) => AnyIndex, n: number) {
  const total = Math.round(n * 1.25) - 1;
  let now = 0;
  const before = gc();
  let index: AnyIndex | undefined = make(() => now);
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    now = (i / n) * WINDOW;
    index.add(idOf(i), Math.floor(i / PER_MESSAGE) + 1);
  }
  const insertMs = performance.now() - t0;
  const after = gc();
  const held = index.size;
  const bytes = index.bytes;
  now = 1.25 * WINDOW;
  index.add(idOf(total), Math.floor(total / PER_MESSAGE) + 1);
  const peak = index.bytes / index.size;
  const lookups = Math.min(LOOKUPS, n);
  let found = 0;
  const t1 = performance.now();
  for (let j = 0; j < lookups; j++) if (index.lookup(idOf(total - ((j * 7919) % n))) !== undefined) found++;
  const hitMs = performance.now() - t1;
  let falseMatches = 0;
  const t2 = performance.now();
  for (let j = 0; j < lookups; j++) if (index.lookup(idOf(j, "1")) !== undefined) falseMatches++;
  const missMs = performance.now() - t2;
  if (found !== lookups) throw new Error(`${name}: ${lookups - found} ids of the window were not found`);
  const row = {
    index: name,
    "ids/window": n,
    "ids held": held,
    "bytes/id held": fmt(bytes / held),
    "bytes/id held (heap Δ)": fmt((after.heap - before.heap) / held),
    "rss Δ MB": fmt((after.rss - before.rss) / 2 ** 20, 0),
    "bytes/id held, next generation started": fmt(peak),
    "inserts/s": rate(total, insertMs),
    "lookups/s (present)": rate(lookups, hitMs),
    "lookups/s (new)": rate(lookups, missMs),
    "false matches per 1M new": fmt((falseMatches / lookups) * 1e6, 0),
  };
  index = undefined;
  return row;
}

async function fill(bus: Bus, subject: string, from: number, to: number, prefix: string): Promise<void> {
  const inFlight = new Set<Promise<unknown>>();
  for (let i = from; i < to; i += PER_MESSAGE) {
    const ids: string[] = [];
    for (let j = i; j < Math.min(to, i + PER_MESSAGE); j++) ids.push(idOf(j, prefix));
    const h = headers();
    h.set(IDS_HEADER, JSON.stringify(ids));
    h.set(KIND_HEADER, "events");
    const p = bus.js.publish(subject, "[]", { headers: h }).finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= 256) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
}

/** Today's start: every id of the window read from message headers into an IdIndex. */
async function fullReadIdIndex(bus: Bus, subject: string): Promise<IdIndex> {
  const index = new IdIndex(WINDOW);
  const last = (await bus.jsm.streams.getMessage(STREAM, { last_by_subj: subject }))!.seq;
  const consumer = await bus.js.consumers.get(STREAM, {
    filter_subjects: subject,
    headers_only: true,
    deliver_policy: DeliverPolicy.All,
  });
  const messages = await consumer.consume({ max_messages: 1000 });
  for await (const m of messages) {
    index.addAll(JSON.parse(m.headers!.get(IDS_HEADER)) as string[], m.seq);
    if (m.seq >= last) break;
  }
  messages.stop();
  return index;
}

async function restart(n: number) {
  const dir = join(tmpdir(), `bench-dedup-${process.pid}-${n}`);
  const nats = await LocalNats.create({ dataDir: dir });
  await nats.start();
  const bus = await connectBus({
    url: nats.url,
    streamMaxAgeHours: 48,
    streamReplicas: 1,
    dedupWindowHours: 24,
    timeoutMs: 600_000,
  });
  const subject = shardSubject("bench", 0);
  const writer = () =>
    new ShardWriter(bus, subject, { dedupWindowMs: WINDOW, maxPayloadBytes: 512 * 1024, timeoutMs: 600_000 });
  const tail = Math.round(n * TAIL);
  try {
    let t = performance.now();
    await fill(bus, subject, 0, n, "0");
    const fillMs = performance.now() - t;

    t = performance.now();
    const todayIds = (await fullReadIdIndex(bus, subject)).size; // and the index is garbage
    const todayMs = performance.now() - t;
    gc();
    if (todayIds !== n) throw new Error(`the full read found ${todayIds} ids of ${n}`);

    t = performance.now();
    const a = writer();
    await a.warm();
    const fallbackMs = performance.now() - t;

    t = performance.now();
    await a.snapshot();
    const snapshotMs = performance.now() - t;
    await fill(bus, subject, 0, tail, "2"); // stored after the snapshot: the tail a restart reads

    t = performance.now();
    const b = writer();
    await b.warm();
    const readyMs = performance.now() - t;
    if (!b.loadedSnapshot) throw new Error("the restarted writer did not start from the snapshot");
    const snapshotBytes = (await bus.jsm.streams.info("TRIBUTARY_DEDUP")).state.bytes;
    return {
      ids: n,
      "ids/message": PER_MESSAGE,
      "fill s": fmt(fillMs / 1000, 1),
      "today: full read into IdIndex s": fmt(todayMs / 1000, 1),
      "no snapshot: full read s": fmt(fallbackMs / 1000, 1),
      "bytes/id after full read": fmt(a.indexBytes / a.indexSize),
      "snapshot write s": fmt(snapshotMs / 1000, 1),
      "snapshot MB": fmt(snapshotBytes / 2 ** 20, 0),
      "tail ids": tail,
      "ready from snapshot + tail s": fmt(readyMs / 1000, 2),
      "of which snapshot load s": fmt(b.loadedSnapshot.ms / 1000, 2),
      "≤ 10 s": readyMs <= 10_000 ? "PASS" : "FAIL",
    };
  } finally {
    await bus.close();
    await nats.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(`bench:dedup — sizes ${SIZES.join(", ")}; ${PER_MESSAGE} ids per message; lookups ${LOOKUPS}`);
const memory = [];
for (const n of SIZES) {
  memory.push(inMemory("IdIndex (today)", (now) => new IdIndex(WINDOW, now), n));
  memory.push(inMemory("FingerprintIndex", (now) => new FingerprintIndex(WINDOW, { now }), n));
  console.table([memory[memory.length - 2], memory[memory.length - 1]]);
}
const bound = memory.filter((r) => r.index === "FingerprintIndex").every((r) => Number(r["bytes/id held"]) <= 4);
console.log(
  `FingerprintIndex ≤ 4 bytes per id held, tables at the load they were sized for: ${bound ? "PASS" : "FAIL"}`,
);
if (RESTART) {
  const rows = [];
  for (const n of SIZES) {
    rows.push(await restart(n));
    console.table([rows[rows.length - 1]]);
  }
}
