import { expect, test } from "bun:test";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/**
 * Issue 16 #1: nothing a sender can send poisons a users pipeline. Each refused event is
 * dead-lettered with its reason, named in lastErrors and counted on /v1/pipelines and /metrics;
 * the rest of its batch lands and every message is acknowledged. Profiles are bounded (README
 * "Users": limits). Datetimes on a DateTime64 server: test/chdb/users-chdb.test.ts.
 */

const ADMIN = "users-poison-admin-token";
const KEY = "key-users-poison-0001";
const MODEL = `customerModel:
  email: string
  plan: string
  note_a: string
  note_b: string
  note_c: string
  note_d: string
  note_e: string
  signed_up_at: datetime
`;
const CONNECTION = `connection: poison
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: users
    import: users
    transform:
      mapping:
        email: traits.email
        plan: traits.plan
        note_a: traits.a
        note_b: traits.b
        note_c: traits.c
        note_d: traits.d
        note_e: traits.e
        signed_up_at: traits.signedUpAt
`;
const stack = useStack({ "customer-model.yaml": MODEL, "poison.yaml": CONNECTION }, { adminToken: ADMIN });

async function post(events: unknown[]): Promise<number> {
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ batch: events }),
  });
  if (r.status !== 200) throw new Error(`POST ${r.status}: ${await r.text()}`);
  const body = (await r.json()) as { rejected?: unknown[] };
  expect(body.rejected ?? []).toEqual([]);
  return r.status;
}
const admin = (path: string) => fetch(`${stack.node.url}${path}`, { headers: { Authorization: `Bearer ${ADMIN}` } });
const pipeline = async () =>
  ((await (await admin("/v1/pipelines")).json()) as any).pipelines.find(
    (p: any) => p.connection === "poison" && p.pipeline === "users",
  );

/** Polls /v1/pipelines until `check` holds; generous deadline, the machine may be busy. */
async function pipelineUntil(check: (p: any) => boolean, timeoutMs = 60_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let p: any;
  while (Date.now() < deadline) {
    p = await pipeline();
    if (p && check(p)) return p;
    await Bun.sleep(250);
  }
  throw new Error(`timed out; last /v1/pipelines entry: ${JSON.stringify(p).slice(0, 3000)}`);
}

let seq = 0;
const identify = (
  userId: string | undefined,
  traits: Record<string, unknown>,
  extra: Record<string, unknown> = {},
) => ({
  type: "identify",
  ...(userId !== undefined ? { userId } : {}),
  messageId: `poison-${++seq}`,
  timestamp: new Date(Date.UTC(2025, 0, 1) + seq * 1000).toISOString(),
  traits,
  ...extra,
});
const userRows = (where: string) =>
  rows<any>(
    stack.db,
    `SELECT user_id, anonymous_ids, email, plan, anonymous_ids_dropped FROM tributary.users FINAL WHERE ${where} ORDER BY user_id`,
  );

test("five identifies linking 230 kB anonymousIds to one user: refused and dead-lettered; the same request's user and later ones load", async () => {
  const big = (n: number) => `anon-${n}-` + "x".repeat(230 * 1024);
  const before = await pipelineUntil(() => true);
  const poisoned = [1, 2, 3, 4, 5].map((n) =>
    identify("user-huge", { email: `huge${n}@example.com` }, { anonymousId: big(n) }),
  );
  await post([...poisoned, identify("bystander-0", { email: "b0@example.com" })]);
  for (let i = 1; i <= 3; i++) {
    await Bun.sleep(1000);
    await post([identify(`bystander-${i}`, { email: `b${i}@example.com` })]);
  }
  const loaded = await eventually<any>(
    stack.db,
    `SELECT user_id FROM tributary.users FINAL WHERE startsWith(user_id, 'bystander-') ORDER BY user_id`,
    (r) => r.length === 4,
    60_000,
  );
  expect(loaded.map((r) => r.user_id)).toEqual(["bystander-0", "bystander-1", "bystander-2", "bystander-3"]);

  // Every message acknowledged, each poisoned event failed with its reason and dead-lettered.
  const p = await pipelineUntil((x) => x.lag === 0 && x.deadLetters - before.deadLetters >= 5);
  expect(p.deadLetters - before.deadLetters).toBe(5);
  expect(p.deadLettered - before.deadLettered).toBe(5);
  expect(p.failed - before.failed).toBe(5);
  for (const e of poisoned) {
    const err = p.lastErrors.find((x: any) => x.messageId === e.messageId);
    expect(err?.error).toContain(`pipeline "users"`);
    expect(err?.error).toMatch(/anonymousId is 235,5\d\d bytes, more than the 1,024 an id may have/);
  }
  const metrics = await (await admin("/metrics")).text();
  expect(metrics).toMatch(
    new RegExp(`tributary_pipeline_dead_letters\\{connection="poison",pipeline="users"\\} ${p.deadLetters}\\b`),
  );
  expect(metrics).toMatch(
    new RegExp(`tributary_pipeline_events\\{connection="poison",pipeline="users",stage="failed"\\} ${p.failed}\\b`),
  );
  // The refused user never got a half-written profile.
  expect(await userRows(`user_id = 'user-huge'`)).toEqual([]);
}, 120_000);

test("a profile growing past its size limit: the update that would overflow it is refused, earlier and later ones land", async () => {
  const before = await pipelineUntil(() => true);
  // Each event is within the 256 KiB event limit; together they would be 1 MB, past NATS max_payload.
  const fat = (k: string) => identify("user-fat", { [k]: k.repeat(200 * 1024) });
  const events = [fat("a"), fat("b"), fat("c"), fat("d"), fat("e")];
  await post([events[0], identify("bystander-fat", { plan: "ok" })]);
  await post(events.slice(1));
  const p = await pipelineUntil((x) => x.lag === 0 && x.deadLetters - before.deadLetters >= 4);
  expect(p.deadLetters - before.deadLetters).toBe(4);
  for (const e of events.slice(1)) {
    expect(p.lastErrors.find((x: any) => x.messageId === e.messageId)?.error).toMatch(
      /the profile would be \d[\d,]* bytes, more than its limit of 262,144/,
    );
  }
  // The profile keeps what fitted, and takes later updates that fit.
  await post([identify("user-fat", { plan: "pro", a: "small" })]);
  const r = await eventually<any>(
    stack.db,
    `SELECT user_id, plan, length(note_a) AS a, note_b FROM tributary.users FINAL WHERE user_id IN ('user-fat', 'bystander-fat') ORDER BY user_id`,
    (x) => x.length === 2 && x[1].plan === "pro",
    60_000,
  );
  expect(r).toEqual([
    { user_id: "bystander-fat", plan: "ok", a: null, note_b: null },
    { user_id: "user-fat", plan: "pro", a: "5", note_b: null },
  ]);
  expect((await pipelineUntil((x) => x.lag === 0)).lag).toBe(0);
}, 120_000);

test("beyond 100 anonymous ids a profile keeps the latest linked, counts the dropped ones, and a dropped id still resolves to its user", async () => {
  const ids = Array.from({ length: 130 }, (_, i) => `many-anon-${String(i).padStart(3, "0")}`);
  // Within a request the pipeline may see events in any order: the first 60 are linked before the others are sent.
  await post(ids.slice(0, 60).map((a) => identify("user-many", {}, { anonymousId: a })));
  await eventually<any>(
    stack.db,
    `SELECT length(anonymous_ids) AS n FROM tributary.users FINAL WHERE user_id = 'user-many'`,
    (x) => x[0]?.n === "60",
    60_000,
  );
  await post(ids.slice(60).map((a) => identify("user-many", {}, { anonymousId: a })));
  let r = await eventually<any>(
    stack.db,
    `SELECT arraySort(anonymous_ids) AS ids, anonymous_ids_dropped AS d FROM tributary.users FINAL WHERE user_id = 'user-many'`,
    (x) => x.length === 1 && x[0].d === 30,
    60_000,
  );
  // The 30 dropped are among the first 60 linked: all of the last 70 are kept.
  expect(r[0].ids.length).toBe(100);
  expect(r[0].ids.slice(30)).toEqual(ids.slice(60));
  // An event carrying only an anonymous id dropped from the list lands on the same user.
  await post([identify(undefined, { plan: "via-dropped-id" }, { anonymousId: ids[0] })]);
  r = await eventually<any>(
    stack.db,
    `SELECT user_id, plan FROM tributary.users FINAL WHERE plan = 'via-dropped-id'`,
    (x) => x.length === 1,
    60_000,
  );
  expect(r).toEqual([{ user_id: "user-many", plan: "via-dropped-id" }]);
}, 120_000);

test("a datetime that is no calendar date, or out of the range the users table stores, fails that event; the profile goes on", async () => {
  const before = await pipelineUntil(() => true);
  // Debian's 18.16 stores datetimes as UInt64 epoch milliseconds, read as DateTime (1970..2106).
  const bad = [
    "2024-13-45",
    "2025-02-30",
    "2024-04-31T10:00:00Z",
    "2024-01-01T24:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "2106-02-08T00:00:00Z",
    9007199254740991,
    -1,
  ];
  const events = bad.map((v) => identify("user-dates", { signedUpAt: v }));
  await post([identify("user-dates", { signedUpAt: "2024-02-29T12:00:00.250Z", plan: "leap" }), ...events]);
  const p = await pipelineUntil((x) => x.lag === 0 && x.deadLetters - before.deadLetters >= bad.length);
  expect(p.deadLetters - before.deadLetters).toBe(bad.length);
  events.forEach((e, i) => {
    const err = p.lastErrors.find((x: any) => x.messageId === e.messageId)?.error;
    expect(`${JSON.stringify(bad[i])}: ${err}`).toContain(`property "signed_up_at" must be datetime`);
  });
  await post([identify("user-dates", { plan: "after" })]);
  const r = await eventually<any>(
    stack.db,
    `SELECT plan, signed_up_at FROM tributary.users FINAL WHERE user_id = 'user-dates'`,
    (x) => x.length === 1 && x[0].plan === "after",
    60_000,
  );
  expect(r).toEqual([{ plan: "after", signed_up_at: String(Date.parse("2024-02-29T12:00:00.250Z")) }]);
}, 120_000);

test("an id longer than the limit (userId, previousId) fails that event with its reason; the batch's other events land", async () => {
  const before = await pipelineUntil(() => true);
  const long = "u".repeat(1025);
  const events = [
    identify(long, { plan: "x" }),
    {
      type: "alias",
      userId: "alias-target",
      previousId: long,
      messageId: `poison-${++seq}`,
      timestamp: "2025-01-02T00:00:00.000Z",
    },
  ];
  await post([...events, identify("bystander-ids", { plan: "ok" })]);
  await eventually<any>(
    stack.db,
    `SELECT user_id FROM tributary.users FINAL WHERE user_id = 'bystander-ids'`,
    (x) => x.length === 1,
    60_000,
  );
  const p = await pipelineUntil((x) => x.lag === 0 && x.deadLetters - before.deadLetters >= 2);
  expect(p.lastErrors.find((x: any) => x.messageId === events[0]!.messageId)?.error).toContain(
    "userId is 1,025 bytes, more than the 1,024 an id may have",
  );
  expect(p.lastErrors.find((x: any) => x.messageId === events[1]!.messageId)?.error).toContain(
    "previousId is 1,025 bytes, more than the 1,024 an id may have",
  );
  // An id exactly at the limit is fine.
  await post([identify("v".repeat(1024), { plan: "at-limit" })]);
  await eventually<any>(
    stack.db,
    `SELECT plan FROM tributary.users FINAL WHERE plan = 'at-limit'`,
    (x) => x.length === 1,
    60_000,
  );
}, 120_000);

test("a merge that would take the profile past its limit is refused whole: both profiles and every identity link stay as they were", async () => {
  const before = await pipelineUntil(() => true);
  await post([
    identify(undefined, { a: "a".repeat(200 * 1024) }, { anonymousId: "merge-anon" }),
    identify("merge-user", { b: "b".repeat(200 * 1024) }),
  ]);
  await eventually<any>(
    stack.db,
    `SELECT 1 FROM tributary.users FINAL WHERE user_id = 'merge-user' OR has(anonymous_ids, 'merge-anon')`,
    (x) => x.length === 2,
    60_000,
  );
  const link = identify("merge-user", { plan: "linked" }, { anonymousId: "merge-anon" });
  await post([link]);
  const p = await pipelineUntil((x) => x.lag === 0 && x.deadLetters - before.deadLetters >= 1);
  expect(p.lastErrors.find((x: any) => x.messageId === link.messageId)?.error).toMatch(
    /the profile would be \d[\d,]* bytes, more than its limit of 262,144/,
  );
  // The anonymous id still leads to its own profile, the user to theirs.
  await post([
    identify(undefined, { plan: "anon-later" }, { anonymousId: "merge-anon" }),
    identify("merge-user", { plan: "user-later" }),
  ]);
  const r = await eventually<any>(
    stack.db,
    `SELECT user_id, anonymous_ids, plan, length(ifNull(note_a, '')) AS a, length(ifNull(note_b, '')) AS b FROM tributary.users FINAL WHERE user_id = 'merge-user' OR has(anonymous_ids, 'merge-anon') ORDER BY plan`,
    (x) => x.length === 2 && x[0].plan === "anon-later" && x[1].plan === "user-later",
    60_000,
  );
  expect(r).toEqual([
    { user_id: null, anonymous_ids: ["merge-anon"], plan: "anon-later", a: String(200 * 1024), b: "0" },
    { user_id: "merge-user", anonymous_ids: [], plan: "user-later", a: "0", b: String(200 * 1024) },
  ]);
}, 120_000);
