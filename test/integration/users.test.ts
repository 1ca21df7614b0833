import { expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/**
 * "Import users into warehouse" end to end: transformations into the Customer Model, the model
 * check, identity resolution, and `users FINAL` as the one-row-per-user view.
 */

const fixture = JSON.parse(readFileSync(join(import.meta.dir, "../fixtures/segment-identify.json"), "utf8"));
const MODEL = `customerModel:
  email: string
  plan: string
  company: string
  country: string
  age: int
  is_active: boolean
  signed_up_at: datetime
  tags: array(string)
`;
const KINDS: Record<string, string> = {
  mapping: `mapping:
        email: $lowercase(traits.email)
        plan: traits.plan
        company: traits.company
        country: traits.country`,
  jsonata: `jsonata: '{"email": $lowercase(traits.email), "plan": traits.plan, "company": traits.company, "country": traits.country}'`,
  javascript: `javascript: |
        function transform(event) {
          const t = event.traits || {};
          return { email: t.email && t.email.toLowerCase(), plan: t.plan, company: t.company, country: t.country };
        }`,
  python: `python: |
        def transform(event):
            t = event.get("traits") or {}
            return {"email": t.get("email", "").lower() or None, "plan": t.get("plan"), "company": t.get("company"), "country": t.get("country")}`,
};
const connection = (kind: string) => `connection: u-${kind}
source: webhook
writeKeys: ["key-users-${kind}-0001"]
pipelines:
  - name: users
    import: users
    transform:
      ${KINDS[kind]}
`;
const journey = `connection: journey
source: webhook
writeKeys: ["key-journey-0001"]
pipelines:
  - name: profiles
    import: users
    transform:
      mapping:
        email: traits.email
        plan: traits.plan
        age: traits.age
        is_active: traits.active
        signed_up_at: traits.signedUpAt
        tags: traits.tags
`;

const files: Record<string, string> = { "customer-model.yaml": MODEL, "journey.yaml": journey };
for (const kind of Object.keys(KINDS)) files[`u-${kind}.yaml`] = connection(kind);
const stack = useStack(files);

const post = (key: string, events: unknown[]) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  }).then((r) => r.status);
const users = (where: string) =>
  rows<any>(
    stack.db,
    `SELECT user_id, anonymous_ids, email, plan, company, country, age, is_active, signed_up_at, tags FROM tributary.users FINAL WHERE ${where} ORDER BY user_id`,
  );
const stats = async (key: string) => (await (await stack.node.pipelinesReady).snapshot(key))!;

for (const kind of Object.keys(KINDS)) {
  test(`the seed identify fixture through the ${kind} transformation gives the expected users row`, async () => {
    // Profiles are shared by every connection: each kind gets its own user and anonymous id.
    const userId = `seed-${kind}`;
    const anonymousId = `${fixture.anonymousId}-${kind}`;
    expect(
      await post(`key-users-${kind}-0001`, [{ ...fixture, userId, anonymousId, messageId: `seed-${kind}-1` }]),
    ).toBe(200);
    const [row] = await eventually<any>(
      stack.db,
      `SELECT * FROM tributary.users FINAL WHERE user_id = '${userId}'`,
      (r) => r.length === 1,
      30_000,
    );
    expect(row).toMatchObject({
      user_id: userId,
      anonymous_ids: [anonymousId],
      email: "emily.johnson@example.com",
      plan: "Enterprise",
      company: "Acme Corp",
      country: "United States",
      age: null,
      tags: [],
    });
    // first/last seen are the event's (skew-corrected) timestamp, to the millisecond.
    const ms = await rows<any>(
      stack.db,
      `SELECT toUInt64(first_seen_at) AS f, toUInt64(last_seen_at) AS l FROM tributary.users FINAL WHERE user_id = '${userId}'`,
    );
    expect(Number(ms[0].f)).toBe(Date.parse(fixture.timestamp));
    expect(Number(ms[0].l)).toBe(Date.parse(fixture.timestamp));
  }, 60_000);
}

test("anonymous, then identified: earlier anonymous traits and later events land on one user", async () => {
  const K = "key-journey-0001";
  expect(
    await post(K, [
      {
        type: "identify",
        anonymousId: "anon-j1",
        messageId: "j-1",
        timestamp: "2025-01-01T00:00:00.000Z",
        traits: { plan: "free", tags: ["a"] },
      },
    ]),
  ).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT * FROM tributary.users FINAL WHERE has(anonymous_ids, 'anon-j1')`,
    (r) => r.length === 1 && r[0].user_id === null,
  );
  expect(
    await post(K, [
      {
        type: "identify",
        userId: "user-j",
        anonymousId: "anon-j1",
        messageId: "j-2",
        timestamp: "2025-01-02T00:00:00.000Z",
        traits: { email: "j@example.com" },
      },
    ]),
  ).toBe(200);
  expect(
    await post(K, [
      {
        type: "track",
        event: "E",
        userId: "user-j",
        messageId: "j-3",
        timestamp: "2025-01-03T00:00:00.000Z",
        traits: { age: 41, active: true, signedUpAt: "2024-12-31T23:59:59.123Z" },
      },
    ]),
  ).toBe(200);
  const r = await eventually<any>(
    stack.db,
    `SELECT user_id, anonymous_ids, email, plan, age, is_active, tags FROM tributary.users FINAL WHERE user_id = 'user-j' OR has(anonymous_ids, 'anon-j1')`,
    (x) => x.length === 1 && x[0].age !== null,
  );
  expect(r).toEqual([
    {
      user_id: "user-j",
      anonymous_ids: ["anon-j1"],
      email: "j@example.com",
      plan: "free",
      age: "41",
      is_active: expect.anything(),
      tags: ["a"],
    },
  ]);
  expect([true, 1]).toContain(r[0].is_active);
});

test("two anonymous ids merge into one user; the merged-away profile disappears from users FINAL", async () => {
  const K = "key-journey-0001";
  expect(
    await post(K, [
      {
        type: "identify",
        anonymousId: "anon-m1",
        messageId: "m-1",
        timestamp: "2025-02-01T00:00:00.000Z",
        traits: { plan: "trial" },
      },
      {
        type: "identify",
        anonymousId: "anon-m2",
        messageId: "m-2",
        timestamp: "2025-02-02T00:00:00.000Z",
        traits: { email: "m@example.com" },
      },
    ]),
  ).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT * FROM tributary.users FINAL WHERE hasAny(anonymous_ids, ['anon-m1', 'anon-m2'])`,
    (r) => r.length === 2,
  );
  expect(
    await post(K, [
      {
        type: "identify",
        userId: "user-m",
        anonymousId: "anon-m1",
        messageId: "m-3",
        timestamp: "2025-02-03T00:00:00.000Z",
        traits: {},
      },
    ]),
  ).toBe(200);
  expect(
    await post(K, [
      {
        type: "identify",
        userId: "user-m",
        anonymousId: "anon-m2",
        messageId: "m-4",
        timestamp: "2025-02-04T00:00:00.000Z",
        traits: {},
      },
    ]),
  ).toBe(200);
  const r = await eventually<any>(
    stack.db,
    `SELECT user_id, arraySort(anonymous_ids) AS ids, email, plan FROM tributary.users FINAL WHERE hasAny(anonymous_ids, ['anon-m1', 'anon-m2']) OR user_id = 'user-m'`,
    (x) => x.length === 1 && x[0].ids.length === 2,
    30_000,
  );
  expect(r).toEqual([{ user_id: "user-m", ids: ["anon-m1", "anon-m2"], email: "m@example.com", plan: "trial" }]);
  // alias works the same way: an anonymous profile folded into the user.
  expect(
    await post(K, [
      {
        type: "identify",
        anonymousId: "anon-m3",
        messageId: "m-5",
        timestamp: "2025-02-05T00:00:00.000Z",
        traits: { tags: ["x", "y"] },
      },
    ]),
  ).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT * FROM tributary.users FINAL WHERE has(anonymous_ids, 'anon-m3')`,
    (x) => x.length === 1,
  );
  expect(
    await post(K, [
      {
        type: "alias",
        userId: "user-m",
        previousId: "anon-m3",
        messageId: "m-6",
        timestamp: "2025-02-06T00:00:00.000Z",
      },
    ]),
  ).toBe(200);
  const after = await eventually<any>(
    stack.db,
    `SELECT user_id, tags FROM tributary.users FINAL WHERE has(anonymous_ids, 'anon-m3') OR user_id = 'user-m'`,
    (x) => x.length === 1 && x[0].tags.length === 2,
    30_000,
  );
  expect(after).toEqual([{ user_id: "user-m", tags: ["x", "y"] }]);
});

test("out-of-order and duplicate delivery: the latest timestamp wins whatever the order of arrival", async () => {
  const K = "key-journey-0001";
  const ev = (n: number, plan: string, day: string) => ({
    type: "identify",
    userId: "user-o",
    messageId: `o-${n}`,
    timestamp: `2025-03-${day}T00:00:00.000Z`,
    traits: { plan },
  });
  expect(await post(K, [ev(3, "gold", "03")])).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT plan FROM tributary.users FINAL WHERE user_id = 'user-o'`,
    (x) => x.length === 1 && x[0].plan === "gold",
  );
  // Older events arriving later, and the newest again (a redelivery), change nothing.
  expect(await post(K, [ev(1, "free", "01"), ev(2, "silver", "02")])).toBe(200);
  expect(await post("key-journey-0001", [{ ...ev(3, "gold", "03"), messageId: "o-3" }])).toBe(200);
  await Bun.sleep(800);
  const r = await users(`user_id = 'user-o'`);
  expect(r.map((x) => x.plan)).toEqual(["gold"]);
  const s = await stats("journey/profiles");
  expect(s.failed).toBe(0);
  // first_seen_at is the oldest event's time, last_seen_at the newest's.
  const seen = await rows<any>(
    stack.db,
    `SELECT toUInt64(first_seen_at) AS f, toUInt64(last_seen_at) AS l FROM tributary.users FINAL WHERE user_id = 'user-o'`,
  );
  expect([Number(seen[0].f), Number(seen[0].l)]).toEqual([
    Date.parse("2025-03-01T00:00:00.000Z"),
    Date.parse("2025-03-03T00:00:00.000Z"),
  ]);
});

test("output that breaks the Customer Model fails that event with pipeline, property and messageId; others go on", async () => {
  const K = "key-journey-0001";
  expect(
    await post(K, [
      { type: "identify", userId: "user-bad", messageId: "bad-1", traits: { age: "forty" } },
      { type: "identify", userId: "user-good", messageId: "good-1", traits: { age: 30 } },
    ]),
  ).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT age FROM tributary.users FINAL WHERE user_id = 'user-good'`,
    (x) => x.length === 1,
  );
  expect(await users(`user_id = 'user-bad'`)).toEqual([]);
  const s = await stats("journey/profiles");
  const err = s.lastErrors.find((e) => e.messageId === "bad-1")!;
  expect(err.error).toContain(`pipeline "profiles"`);
  expect(err.error).toContain(`property "age" must be int`);
  expect(err.error).toContain("bad-1");
});

test("adding a property adds a column at reload; retyping one is refused unless the model says migrate", async () => {
  const dir = stack.node.config.options.dir;
  writeFileSync(join(dir, "customer-model.yaml"), MODEL + "  score: float\n");
  const cols = await eventually<any>(
    stack.db,
    `SELECT name, type FROM system.columns WHERE database = 'tributary' AND table = 'users' AND name = 'score'`,
    (x) => x.length === 1,
  );
  expect(cols[0].type).toBe("Nullable(Float64)");
  writeFileSync(join(dir, "customer-model.yaml"), MODEL.replace("age: int", "age: string") + "  score: float\n");
  const manager = await stack.node.pipelinesReady;
  for (let i = 0; i < 1200 && !(await manager.lastError())?.includes("Customer Model"); i++) await Bun.sleep(50);
  const lastError = await manager.lastError();
  expect(lastError).toContain(`property "age" would change from Nullable(Int64) to Nullable(String)`);
  expect(lastError).toContain("migrate: true");
  const age = await rows<any>(
    stack.db,
    `SELECT type FROM system.columns WHERE database = 'tributary' AND table = 'users' AND name = 'age'`,
  );
  expect(age[0].type).toBe("Nullable(Int64)");
});
