// `npm run bench:users`: identity resolution's throughput at 1,000 and at 100,000 profiles, in one
// run (issue 21). A local nats-server; the users pipeline's per-batch KV work, as its stage does it
// (ProfileStore.apply with identifiers [email, phone], then the source identities); ClickHouse is
// left out (its inserts do not depend on the number of profiles). The same measured workload at
// both sizes, in batches of 500: a third updates of known users, a third new users, a third
// anonymous visitors giving a known user's email (merges). Incremental resolution keeps events/s
// (and KV operations per event) flat as profiles grow.
//
// Environment: BENCH_PROFILES (100000), BENCH_EVENTS (measured events per round, 6000),
// BENCH_ROUNDS (3, the best kept),
// BENCH_BASELINE=1 (no identifiers and no source identities: resolution as before issue 21).
import { rmSync } from "node:fs";
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { parseCommand } from "../scripts/cli.ts";
import { tempDir } from "../test/harness/services.ts";
import { LocalNats } from "../src/services/nats-server.ts";
import { ProfileStore, kvOps, type ProfileUpdate } from "../src/pipeline/users/profiles.ts";
import { SourceStore } from "../src/pipeline/users/sources.ts";
import type { IdentityRules } from "../src/pipeline/users/identity-rules.ts";

parseCommand({
  name: "bench:users",
  options: {},
  usage: `usage: npm run bench:users

Identity resolution (identifiers [email, phone]) in events/s at 1,000 and at 100,000 profiles in
the same run, against a local nats-server; also KV operations per event. Prints one JSON line.

  -h, --help   this help

Environment: BENCH_PROFILES (100000), BENCH_EVENTS (6000 measured events per round),
BENCH_ROUNDS (3 rounds per size, the best kept),
BENCH_BASELINE=1 (no identifiers, no source identities: resolution as before identifiers).`,
});

const LARGE = Number(process.env.BENCH_PROFILES ?? 100_000);
const EVENTS = Number(process.env.BENCH_EVENTS ?? 6000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const BATCH = 500;
const BASELINE = process.env.BENCH_BASELINE === "1";
const RULES: IdentityRules = { identifiers: BASELINE ? [] : ["email", "phone"], mergeUserIds: false };

const dir = tempDir("bench-users");
const nats = await LocalNats.create({ dataDir: dir });
await nats.start();
const nc = await connect({ servers: nats.url });
const store = await ProfileStore.open(jetstream(nc));
const sources = new SourceStore(store.sources!);

let seq = 0;
let users = 0;
let visitors = 0;
const event = (u: Omit<ProfileUpdate, "timestamp" | "messageId">): ProfileUpdate => ({
  ...u,
  timestamp: Date.UTC(2026, 0, 1) + ++seq,
  messageId: `b${seq}`,
});
const newUser = () => {
  const n = users++;
  return event({ userId: `user-${n}`, props: { email: `u${n}@example.com`, phone: `+${n}`, plan: "free" } });
};

async function run(updates: ProfileUpdate[]): Promise<void> {
  for (let i = 0; i < updates.length; i += BATCH) {
    const batch = updates.slice(i, i + BATCH);
    const out = await store.apply(batch, RULES);
    const applied = batch.flatMap((u, j) => (out.targets[j] ? [{ ...u, profileId: out.targets[j]! }] : []));
    if (!BASELINE) await sources.record("bench", "users", applied);
  }
}

async function growTo(profiles: number): Promise<void> {
  while (users < profiles) await run(Array.from({ length: Math.min(5000, profiles - users) }, newUser));
}

/** The measured workload: the same mix at every size. */
function workload(): ProfileUpdate[] {
  const pick = () => Math.floor(Math.random() * users);
  return Array.from({ length: EVENTS }, (_, i) => {
    if (i % 3 === 0) return event({ userId: `user-${pick()}`, props: { plan: i % 2 ? "pro" : "team" } });
    if (i % 3 === 1) return newUser();
    return event({ anonymousId: `visitor-${visitors++}`, props: { email: `u${pick()}@example.com` } });
  });
}

/** The best of ROUNDS rounds of the workload (the least disturbed by JIT, GC and neighbours). */
async function measure(profiles: number) {
  await growTo(profiles);
  let best = { eventsPerSecond: 0, kvOpsPerEvent: 0 };
  for (let round = 0; round < ROUNDS; round++) {
    const updates = workload();
    const ops = kvOps.reads + kvOps.writes;
    const t = performance.now();
    await run(updates);
    const eventsPerSecond = Math.round(updates.length / ((performance.now() - t) / 1000));
    const kvOpsPerEvent = Number(((kvOps.reads + kvOps.writes - ops) / updates.length).toFixed(2));
    if (eventsPerSecond > best.eventsPerSecond) best = { eventsPerSecond, kvOpsPerEvent };
  }
  return { profiles, ...best };
}

try {
  const small = await measure(1000);
  process.stderr.write(`1,000 profiles: ${small.eventsPerSecond} events/s; growing to ${LARGE}…\n`);
  const large = await measure(LARGE);
  console.log(
    JSON.stringify({
      identifiers: RULES.identifiers,
      sourceIdentities: !BASELINE,
      small,
      large,
      ratio: Number((large.eventsPerSecond / small.eventsPerSecond).toFixed(2)),
    }),
  );
} finally {
  await nc.close();
  await nats.stop();
  rmSync(dir, { recursive: true, force: true });
}
