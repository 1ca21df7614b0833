import { expect, test } from "bun:test";
import { useStack } from "../harness/stack.ts";
import { kvOps } from "../../src/pipeline/users/profiles.ts";

/**
 * Issue 21, incrementality through the public path: identify events over HTTP into a users
 * pipeline with identifiers [email, phone], counted in KV operations (reads and writes of the
 * identity graph, the profiles and the source identities) per event. The pipelines run in the
 * node's own process (TRIBUTARY_PIPELINE_WORKERS=0) so the test reads the store's counters. The
 * cost of 500 new users and of 500 merges by email is the same with 10,000 profiles as with none:
 * nothing scans the profiles. Timing is in `npm run bench:users`.
 */
const KEY = "key-identity-scale-0001";
const stack = useStack(
  {
    "customer-model.yaml":
      "customerModel:\n  email: string\n  phone: string\n  plan: string\nidentifiers: [email, phone]\n",
    "shop.yaml": `connection: shop
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: users
    import: users
    transform:
      mapping:
        email: traits.email
        phone: traits.phone
        plan: traits.plan
`,
  },
  { pipelineWorkers: 0, batchMaxAgeMs: 50 },
);

let seq = 0;
async function post(events: unknown[]) {
  for (let i = 0; i < events.length; i += 500) {
    const r = await fetch(`${stack.node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ batch: events.slice(i, i + 500) }),
    });
    expect(r.status).toBe(200);
  }
}
const identify = (ids: Record<string, string>, traits: Record<string, unknown>) => ({
  type: "identify",
  messageId: `sc-${++seq}`,
  timestamp: new Date(Date.UTC(2026, 3, 1) + seq * 1000).toISOString(),
  ...ids,
  traits,
});
const newUsers = (from: number, n: number) =>
  Array.from({ length: n }, (_, i) =>
    identify({ userId: `su-${from + i}` }, { email: `s${from + i}@x`, phone: `+${from + i}`, plan: "free" }),
  );
/** Anonymous visitors giving a known user's email: each merges into that user. */
const merges = (from: number, n: number) =>
  Array.from({ length: n }, (_, i) => identify({ anonymousId: `sa-${from + i}` }, { email: `s${from + i}@x` }));

async function loaded(n: number) {
  for (let i = 0; i < 1200; i++) {
    const s = await (await stack.node.pipelinesReady).snapshot("shop/users");
    if ((s?.transformed ?? 0) >= n && s?.lag === 0) return;
    await Bun.sleep(100);
  }
  throw new Error(`users pipeline did not reach ${n} events`);
}
/** KV operations per event while `events` are processed. */
async function perEvent(events: unknown[], total: number): Promise<number> {
  const before = kvOps.reads + kvOps.writes;
  await post(events);
  await loaded(total);
  return (kvOps.reads + kvOps.writes - before) / events.length;
}

test("KV operations per event do not grow from 0 to 10,000 profiles, for new users and for merges by email", async () => {
  const early = await perEvent(newUsers(0, 500), 500);
  const earlyMerge = await perEvent(merges(0, 500), 1000);
  await post(newUsers(500, 9_500));
  await loaded(10_500);
  const late = await perEvent(newUsers(20_000, 500), 11_000);
  const lateMerge = await perEvent(merges(5_000, 500), 11_500);
  console.log(JSON.stringify({ kvOpsPerEvent: { early, late, earlyMerge, lateMerge } }));
  // A new user with email and phone: its links, index entries, profile and source identity.
  expect(early).toBeLessThanOrEqual(12);
  expect(late).toBeLessThanOrEqual(early * 1.05);
  // A merge: the visitor's links, the user's profile through the email index, both profiles written.
  expect(earlyMerge).toBeLessThanOrEqual(16);
  expect(lateMerge).toBeLessThanOrEqual(earlyMerge * 1.05);
}, 600_000);
