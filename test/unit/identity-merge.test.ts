import { afterAll, beforeAll, expect, test } from "bun:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNats } from "../harness/services.ts";
import {
  ProfileStore,
  identifierKey,
  keyOf,
  kvOps,
  type Profile,
  type ProfileUpdate,
} from "../../src/pipeline/users/profiles.ts";
import type { IdentityRules } from "../../src/pipeline/users/identity-rules.ts";

/**
 * Identifier rules (issue 21, PRODUCT.md §8) on the profile store itself, against a real
 * nats-server: which profiles merge, which stay apart, and that the KV work per event does not
 * grow with the number of profiles. The same rules through YAML + HTTP + ClickHouse are in
 * test/integration/identity-*.test.ts.
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

/** A fresh graph for each test (buckets purged), so tests do not see each other's ids. */
async function fresh(): Promise<ProfileStore> {
  await ProfileStore.clear(await jetstreamManager(nc));
  return store;
}

const EMAIL_PHONE: IdentityRules = { identifiers: ["email", "phone"], mergeUserIds: false };
let seq = 0;
const ev = (u: Partial<ProfileUpdate> & { props?: Record<string, unknown> }): ProfileUpdate => ({
  timestamp: Date.UTC(2026, 0, 1) + ++seq * 1000,
  messageId: `m${seq}`,
  props: {},
  ...u,
});

/** The live profile of a userId or anonymousId. */
async function profileOf(kind: "u" | "a", id: string): Promise<Profile | undefined> {
  let pid = (await store.ids.get(keyOf(kind, id)))?.string();
  for (let i = 0; pid && i < 16; i++) {
    const p = (await store.store.get(pid))?.json() as Profile | undefined;
    if (!p?.mergedInto) return p;
    pid = p.mergedInto;
  }
  return undefined;
}

test("two anonymous profiles with the same email merge; the newest value of each property wins", async () => {
  await fresh();
  await store.apply([ev({ anonymousId: "a1", props: { email: "x@example.com", plan: "free" } })], EMAIL_PHONE);
  const out = await store.apply(
    [ev({ anonymousId: "a2", props: { email: "x@example.com", plan: "pro" } })],
    EMAIL_PHONE,
  );
  const a1 = await profileOf("a", "a1");
  const a2 = await profileOf("a", "a2");
  expect(a1!.id).toBe(a2!.id);
  expect(a1!.anonymousIds.sort()).toEqual(["a1", "a2"]);
  expect(a1!.props.plan!.v).toBe("pro");
  // The profile map learns that a2 now leads to the merged profile.
  expect(out.links.some((l) => l.kind === "a" && l.id === "a2" && l.profileId === a1!.id)).toBe(true);
  // Without identifiers the same events stay two profiles.
  await fresh();
  await store.apply([ev({ anonymousId: "a1", props: { email: "x@example.com" } })]);
  await store.apply([ev({ anonymousId: "a2", props: { email: "x@example.com" } })]);
  expect((await profileOf("a", "a1"))!.id).not.toBe((await profileOf("a", "a2"))!.id);
});

test("priority: emails that differ keep two profiles apart even when their phones match", async () => {
  await fresh();
  await store.apply([ev({ anonymousId: "a1", props: { email: "x@example.com", phone: "+100" } })], EMAIL_PHONE);
  await store.apply([ev({ anonymousId: "a2", props: { email: "y@example.com", phone: "+100" } })], EMAIL_PHONE);
  expect((await profileOf("a", "a1"))!.id).not.toBe((await profileOf("a", "a2"))!.id);
  // A profile without an email is decided by the phone.
  await store.apply([ev({ anonymousId: "a3", props: { phone: "+200" } })], EMAIL_PHONE);
  await store.apply([ev({ anonymousId: "a4", props: { email: "z@example.com", phone: "+200" } })], EMAIL_PHONE);
  expect((await profileOf("a", "a3"))!.id).toBe((await profileOf("a", "a4"))!.id);
  // With phone first, the matching phones win over the differing emails.
  await fresh();
  const phoneFirst: IdentityRules = { identifiers: ["phone", "email"], mergeUserIds: false };
  await store.apply([ev({ anonymousId: "a1", props: { email: "x@example.com", phone: "+100" } })], phoneFirst);
  await store.apply([ev({ anonymousId: "a2", props: { email: "y@example.com", phone: "+100" } })], phoneFirst);
  expect((await profileOf("a", "a1"))!.id).toBe((await profileOf("a", "a2"))!.id);
});

test("different userIds with one email stay apart by default, merge with mergeUserIds", async () => {
  await fresh();
  await store.apply([ev({ userId: "u1", props: { email: "x@example.com" } })], EMAIL_PHONE);
  await store.apply([ev({ userId: "u2", props: { email: "x@example.com" } })], EMAIL_PHONE);
  expect((await profileOf("u", "u1"))!.id).not.toBe((await profileOf("u", "u2"))!.id);
  // An anonymous profile with that email joins a user's (which one is the first indexed).
  await store.apply([ev({ anonymousId: "a9", props: { email: "x@example.com" } })], EMAIL_PHONE);
  expect((await profileOf("a", "a9"))!.id).toBe((await profileOf("u", "u1"))!.id);

  await fresh();
  const merge: IdentityRules = { ...EMAIL_PHONE, mergeUserIds: true };
  await store.apply([ev({ userId: "u1", props: { email: "x@example.com" } })], merge);
  await store.apply([ev({ userId: "u2", props: { email: "x@example.com" } })], merge);
  const p = await profileOf("u", "u1");
  expect(p!.id).toBe((await profileOf("u", "u2"))!.id);
  expect([p!.userId, ...(p!.userIds ?? [])].sort()).toEqual(["u1", "u2"]);
});

test("a merge that brings a new identifier value merges again (chains resolve in one event)", async () => {
  await fresh();
  await store.apply([ev({ anonymousId: "a1", props: { phone: "+300" } })], EMAIL_PHONE);
  await store.apply([ev({ anonymousId: "a2", props: { email: "w@example.com" } })], EMAIL_PHONE);
  // a3 carries both: it joins a1 by phone... and then a2 by email.
  await store.apply([ev({ anonymousId: "a3", props: { email: "w@example.com", phone: "+300" } })], EMAIL_PHONE);
  const id = (await profileOf("a", "a3"))!.id;
  expect((await profileOf("a", "a1"))!.id).toBe(id);
  expect((await profileOf("a", "a2"))!.id).toBe(id);
});

test("an identifier indexed to a profile another node has not written yet: the event waits for it and merges", async () => {
  await fresh();
  // Another node wrote its identities (profiles come after) and is about to write the profile.
  const pending = "pending-profile";
  await store.ids.put(identifierKey("phone", "+400"), pending);
  await store.ids.put(keyOf("a", "other-node-anon"), pending);
  const profile: Profile = {
    id: pending,
    anonymousIds: ["other-node-anon"],
    firstSeen: 1,
    lastSeen: 1,
    updatedAt: 1,
    props: { phone: { v: "+400", t: 1, m: "m0" } },
  };
  setTimeout(() => void store.store.put(pending, JSON.stringify(profile)), 30);
  await store.apply(
    [ev({ anonymousId: "this-node-anon", props: { email: "v@example.com", phone: "+400" } })],
    EMAIL_PHONE,
  );
  expect((await profileOf("a", "this-node-anon"))!.id).toBe((await profileOf("a", "other-node-anon"))!.id);
});

test("incremental: KV operations per event do not grow with 10,000 profiles", async () => {
  await fresh();
  const batch = (from: number, n: number) =>
    Array.from({ length: n }, (_, i) =>
      ev({
        userId: `user-${from + i}`,
        anonymousId: `anon-${from + i}`,
        props: { email: `e${from + i}@x`, phone: `+${from + i}` },
      }),
    );
  const cost = async (from: number) => {
    const before = { ...kvOps };
    await store.apply(batch(from, 100), EMAIL_PHONE);
    return (kvOps.reads + kvOps.writes - before.reads - before.writes) / 100;
  };
  const early = await cost(0);
  for (let i = 100; i < 10_000; i += 500) await store.apply(batch(i, 500), EMAIL_PHONE);
  const late = await cost(20_000);
  // A brand-new user with anonymous id, email and phone: 4 identity reads, 4 identity and 1 profile writes.
  expect(early).toBeLessThanOrEqual(10);
  expect(late).toBe(early);
  // An event merging by email at 10,000 profiles: still a handful of operations.
  const before = kvOps.reads + kvOps.writes;
  await store.apply([ev({ anonymousId: "late-anon", props: { email: "e5000@x" } })], EMAIL_PHONE);
  expect(kvOps.reads + kvOps.writes - before).toBeLessThanOrEqual(12);
  expect((await profileOf("a", "late-anon"))!.id).toBe((await profileOf("u", "user-5000"))!.id);
}, 120_000);

test("the README's worked example (Identifiers) gives the profiles it shows", async () => {
  await fresh();
  const lower = (t: Record<string, unknown>) => ({
    ...t,
    ...(t.email ? { email: String(t.email).toLowerCase() } : {}),
  });
  const steps: Partial<ProfileUpdate>[] = [
    { anonymousId: "a1", props: lower({ email: "Ann@Example.com", plan: "free" }) },
    { userId: "ann", props: lower({ email: "ann@example.com", plan: "pro" }) },
    { anonymousId: "a2", props: { email: "bob@example.com", phone: "+33100" } },
    { anonymousId: "a3", props: { email: "rob@example.com", phone: "+33100" } },
    { anonymousId: "a4", props: { phone: "+33100" } },
    { userId: "ann2", props: { email: "ann@example.com" } },
  ];
  for (const s of steps) await store.apply([ev(s)], EMAIL_PHONE);
  const row = async (kind: "u" | "a", id: string) => {
    const p = (await profileOf(kind, id))!;
    return [
      p.userId ?? null,
      [...p.anonymousIds].sort(),
      p.props.email?.v ?? null,
      p.props.phone?.v ?? null,
      p.props.plan?.v ?? null,
    ];
  };
  expect(await row("u", "ann")).toEqual(["ann", ["a1"], "ann@example.com", null, "pro"]);
  expect(await row("u", "ann2")).toEqual(["ann2", [], "ann@example.com", null, null]);
  expect(await row("a", "a2")).toEqual([null, ["a2", "a4"], "bob@example.com", "+33100", null]);
  expect(await row("a", "a3")).toEqual([null, ["a3"], "rob@example.com", "+33100", null]);
});
