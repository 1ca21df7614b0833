import { expect, test } from "bun:test";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";
import { currentProfileQuery } from "../../src/pipeline/users/identities-table.ts";

/**
 * Identity resolution by identifiers (issue 21, PRODUCT.md §8) through the public path: YAML,
 * events over HTTP, profiles in ClickHouse (`users FINAL`, `identities`, `profile_map` and the
 * documented join from events to each event's current profile).
 */
const MODEL = `customerModel:
  email: string
  phone: string
  plan: string
identifiers: [email, phone]
`;
const conn = (name: string, key: string) => `connection: ${name}
source: webhook
writeKeys: ["${key}"]
pipelines:
  - name: events
    import: events
  - name: users
    import: users
    transform:
      mapping:
        email: $lowercase(traits.email)
        phone: traits.phone
        plan: traits.plan
`;
const WEB = "key-identity-web-0001";
const APP = "key-identity-app-0001";
const stack = useStack({ "customer-model.yaml": MODEL, "web.yaml": conn("web", WEB), "app.yaml": conn("app", APP) });

let seq = 0;
const at = (n: number) => new Date(Date.UTC(2026, 0, 1, 10, n)).toISOString();
const identify = (ids: { userId?: string; anonymousId?: string }, traits: Record<string, unknown>, minute: number) => ({
  type: "identify",
  messageId: `idm-${++seq}`,
  timestamp: at(minute),
  ...ids,
  traits,
});
async function post(key: string, events: unknown[]) {
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  });
  expect(r.status).toBe(200);
}
/** The profiles whose ids include one of `ids`, as {ids, email, phone, plan}, ids sorted. */
const profiles = (ids: string[]) =>
  rows<any>(
    stack.db,
    `SELECT profile_id, user_id, anonymous_ids, email, phone, plan FROM tributary.users FINAL
     WHERE has([${ids.map((i) => `'${i}'`).join(",")}], ifNull(user_id, '')) OR hasAny(anonymous_ids, [${ids.map((i) => `'${i}'`).join(",")}])
     ORDER BY profile_id`,
  );

test("two connections, one email: their profiles merge; the newest plan wins; events written before the merge resolve to the merged profile", async () => {
  await post(WEB, [identify({ anonymousId: "web-a1" }, { email: "Ann@Example.com", plan: "free" }, 0)]);
  await eventually(stack.db, currentProfileQuery("tributary", "anonymous_id = 'web-a1'"), (r: any[]) =>
    r.some((x) => x.profile_id !== ""),
  );
  const before = (await rows<any>(stack.db, currentProfileQuery("tributary", "anonymous_id = 'web-a1'")))[0].profile_id;
  await post(APP, [identify({ userId: "ann" }, { email: "ann@example.com", plan: "pro" }, 5)]);
  const r = await eventually<any>(
    stack.db,
    `SELECT profile_id, user_id, anonymous_ids, email, plan FROM tributary.users FINAL WHERE user_id = 'ann' OR has(anonymous_ids, 'web-a1')`,
    (x) => x.length === 1 && x[0].user_id === "ann",
  );
  expect(r[0]).toMatchObject({ user_id: "ann", anonymous_ids: ["web-a1"], email: "ann@example.com", plan: "pro" });
  // The web event was stored before the merge; the join gives it the merged profile now.
  const joined = await eventually<any>(
    stack.db,
    currentProfileQuery("tributary", "anonymous_id = 'web-a1' OR user_id = 'ann'"),
    (x) => x.length === 2 && x.every((e) => e.profile_id === r[0].profile_id),
  );
  // The anonymous profile the web event had when it was stored was folded into the user's.
  expect(r[0].profile_id).not.toBe(before);
  expect(joined.length).toBe(2);
  // Each connection's identity is kept with its own values.
  const ids = await eventually<any>(
    stack.db,
    `SELECT connection, identity, identifiers FROM tributary.identities FINAL WHERE identity IN ('a:web-a1', 'u:ann') ORDER BY connection`,
    (x) => x.length === 2,
  );
  expect(ids.map((i) => [i.connection, i.identity, JSON.parse(i.identifiers)])).toEqual([
    ["app", "u:ann", { email: "ann@example.com" }],
    ["web", "a:web-a1", { email: "ann@example.com" }],
  ]);
}, 60_000);

test("priority: different emails keep profiles apart even with the same phone; without an email the phone decides", async () => {
  await post(WEB, [identify({ anonymousId: "p-a1" }, { email: "bob@example.com", phone: "+33100" }, 10)]);
  await eventually(
    stack.db,
    "SELECT 1 FROM tributary.users FINAL WHERE has(anonymous_ids, 'p-a1')",
    (x) => x.length === 1,
  );
  await post(APP, [identify({ anonymousId: "p-a2" }, { email: "rob@example.com", phone: "+33100" }, 11)]);
  await post(APP, [identify({ anonymousId: "p-a3" }, { phone: "+33200" }, 12)]);
  await post(WEB, [identify({ anonymousId: "p-a4" }, { email: "cat@example.com", phone: "+33200" }, 13)]);
  // The pipelines of the two connections load in their own batches: waited for until the profiles
  // settle (three rows can be seen before p-a2's lands and p-a4's merged-away row goes).
  const profiles = (x: any[]) => x.map((r) => [...r.anonymous_ids].sort().join(",")).sort();
  const r = await eventually<any>(
    stack.db,
    "SELECT anonymous_ids FROM tributary.users FINAL WHERE hasAny(anonymous_ids, ['p-a1','p-a2','p-a3','p-a4'])",
    (x) => JSON.stringify(profiles(x)) === JSON.stringify(["p-a1", "p-a2", "p-a3,p-a4"]),
  );
  expect(profiles(r)).toEqual(["p-a1", "p-a2", "p-a3,p-a4"]);
}, 60_000);

test("conflicting identifiers: two userIds with one email stay two profiles (userIds are authoritative)", async () => {
  await post(WEB, [identify({ userId: "carol-1" }, { email: "carol@example.com", plan: "a" }, 20)]);
  await eventually(stack.db, "SELECT 1 FROM tributary.users FINAL WHERE user_id = 'carol-1'", (x) => x.length === 1);
  await post(APP, [identify({ userId: "carol-2" }, { email: "carol@example.com", plan: "b" }, 21)]);
  const r = await eventually<any>(
    stack.db,
    "SELECT user_id, email, plan FROM tributary.users FINAL WHERE user_id IN ('carol-1', 'carol-2') ORDER BY user_id",
    (x) => x.length === 2,
  );
  expect(r).toEqual([
    { user_id: "carol-1", email: "carol@example.com", plan: "a" },
    { user_id: "carol-2", email: "carol@example.com", plan: "b" },
  ]);
  expect((await profiles(["carol-1", "carol-2"])).length).toBe(2);
}, 60_000);
