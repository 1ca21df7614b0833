import { afterAll, beforeAll, expect, test } from "bun:test";
import fc from "fast-check";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNats } from "../harness/services.ts";
import { ProfileStore, keyOf, type Profile, type ProfileUpdate } from "../../src/pipeline/users/profiles.ts";
import type { IdentityRules } from "../../src/pipeline/users/identity-rules.ts";
import { foldSource, identityOf, type SourceIdentity } from "../../src/pipeline/users/sources.ts";
import { rebuildGraph } from "../../src/pipeline/users/resolve.ts";

/**
 * Issue 21, property: `resolve` (rebuild from the source identities under new rules) gives what a
 * fresh ingestion of the same events under the new rules gives. Random sequences of identify
 * events over small pools of userIds, anonymous ids, emails and phones (so merges, conflicts and
 * chains are common), in time order, ingested live under rules A, then resolved under rules B,
 * are compared with the same events ingested under B from an empty graph: same partition of
 * userIds and anonymous ids into profiles, same property values, same first and last seen.
 * Identities keep their identifier values (a person's email is theirs; an event may leave it
 * out), the case in which the equivalence is exact (see resolve.ts).
 */
let nats: Awaited<ReturnType<typeof startNats>>;
let nc: NatsConnection;
let store: ProfileStore;

beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  store = await ProfileStore.open(jetstream(nc));
});
afterAll(async () => {
  await nc?.close();
  await nats?.cleanup();
});

const RULES: IdentityRules[] = [
  { identifiers: [], mergeUserIds: false },
  { identifiers: ["email", "phone"], mergeUserIds: false },
  { identifiers: ["phone", "email"], mergeUserIds: false },
  { identifiers: ["email"], mergeUserIds: true },
  { identifiers: ["email", "phone"], mergeUserIds: true },
];

const person = fc.record({
  email: fc.option(fc.constantFrom("e1@x", "e2@x", "e3@x"), { nil: undefined }),
  phone: fc.option(fc.constantFrom("+1", "+2", "+3"), { nil: undefined }),
});
const scenario = fc.record({
  users: fc.array(person, { minLength: 4, maxLength: 4 }),
  anons: fc.array(person, { minLength: 6, maxLength: 6 }),
  events: fc.array(
    fc.record({
      user: fc.option(fc.nat(3), { nil: undefined }),
      anon: fc.option(fc.nat(5), { nil: undefined }),
      email: fc.boolean(),
      phone: fc.boolean(),
      plan: fc.option(fc.constantFrom("free", "pro", "team"), { nil: undefined }),
      batch: fc.boolean(),
    }),
    { minLength: 1, maxLength: 25 },
  ),
  before: fc.nat(RULES.length - 1),
  after: fc.nat(RULES.length - 1),
});
type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never;

function eventsOf(s: Scenario): ProfileUpdate[][] {
  const batches: ProfileUpdate[][] = [[]];
  s.events.forEach((e, i) => {
    if (e.user === undefined && e.anon === undefined) return;
    // Values are those of the identity the event belongs to: its userId's, else its anonymousId's.
    const who = e.user !== undefined ? s.users[e.user]! : s.anons[e.anon!]!;
    const props: Record<string, unknown> = {};
    if (e.email && who.email) props.email = who.email;
    if (e.phone && who.phone) props.phone = who.phone;
    if (e.plan) props.plan = e.plan;
    const u: ProfileUpdate = {
      userId: e.user !== undefined ? `u${e.user}` : undefined,
      anonymousId: e.anon !== undefined ? `a${e.anon}` : undefined,
      timestamp: 1_000_000 + i * 1000,
      messageId: `m${String(i).padStart(3, "0")}`,
      props,
    };
    if (e.batch || !batches.at(-1)!.length) batches.at(-1)!.push(u);
    else batches.push([u]);
  });
  return batches.filter((b) => b.length);
}

async function profileOf(kind: "u" | "a", id: string): Promise<Profile | undefined> {
  let pid = (await store.ids.get(keyOf(kind, id)))?.string();
  for (let i = 0; pid && i < 64; i++) {
    const p = (await store.store.get(pid))?.json() as Profile | undefined;
    if (!p?.mergedInto) return p;
    pid = p.mergedInto;
  }
  return undefined;
}

/** Profiles as comparable values: their ids (sorted), properties, first and last seen. */
async function picture(batches: ProfileUpdate[][]) {
  const ids = new Set<string>();
  for (const u of batches.flat()) {
    if (u.userId) ids.add(`u:${u.userId}`);
    if (u.anonymousId) ids.add(`a:${u.anonymousId}`);
  }
  const groups = new Map<string, { ids: string[]; p: Profile }>();
  for (const id of ids) {
    const p = await profileOf(id[0] as "u" | "a", id.slice(2));
    if (!p) continue;
    const g = groups.get(p.id) ?? { ids: [], p };
    g.ids.push(id);
    groups.set(p.id, g);
  }
  return [...groups.values()]
    .map(({ ids, p }) => ({
      ids: ids.sort().join(" "),
      props: Object.fromEntries(
        Object.entries(p.props)
          .map(([k, v]) => [k, v.v] as const)
          .sort(),
      ),
      firstSeen: p.firstSeen,
      lastSeen: p.lastSeen,
    }))
    .sort((a, b) => (a.ids < b.ids ? -1 : 1));
}

async function ingest(batches: ProfileUpdate[][], rules: IdentityRules): Promise<SourceIdentity[]> {
  await ProfileStore.clear(await jetstreamManager(nc));
  const records = new Map<string, SourceIdentity>();
  for (const b of batches) {
    const out = await store.apply(b, rules);
    b.forEach((u, i) => {
      const profileId = out.targets[i];
      if (profileId === undefined) return;
      const id = identityOf(u);
      records.set(id, foldSource(records.get(id), "c", "users", { ...u, profileId }).record);
    });
  }
  return [...records.values()];
}

test("resolve under new rules equals a fresh ingestion under them", async () => {
  const jsm = await jetstreamManager(nc);
  await fc.assert(
    fc.asyncProperty(scenario, async (s) => {
      const batches = eventsOf(s);
      const before = RULES[s.before]!;
      const after = RULES[s.after]!;
      const records = await ingest(batches, before);
      await rebuildGraph(store, jsm, records, after, 7);
      const resolved = await picture(batches);
      await ingest(batches, after);
      const fresh = await picture(batches);
      expect(resolved).toEqual(fresh);
    }),
    { numRuns: 150, seed: 210021 },
  );
}, 240_000);
