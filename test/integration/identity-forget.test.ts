import { expect, test } from "bun:test";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/**
 * Forgetting a user (issue 21, PRODUCT.md §8) through the public path: `DELETE /v1/users/<email>`
 * (admin) removes the profile, its identities, its profile_map entries and its events rows on
 * ClickHouse 18.16 (mutations, waited for), and answers what it removed; a replay of both
 * pipelines and a late event bring nothing back (dropped and counted as `forgotten`);
 * `forget --undo` lets new events in again; `scripts/forget.ts <anonymousId>` does the same as the
 * route.
 */
const ROOT = join(import.meta.dir, "../..");
const ADMIN = "identity-forget-admin-token";
const KEY = "key-identity-forget-0001";
const stack = useStack(
  {
    "customer-model.yaml": "customerModel:\n  email: string\n  plan: string\nidentifiers: [email]\n",
    "shop.yaml": `connection: shop
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: events
    import: events
  - name: users
    import: users
    transform:
      mapping:
        email: traits.email
        plan: traits.plan
`,
  },
  { adminToken: ADMIN },
);

let seq = 0;
const ev = (type: string, ids: { userId?: string; anonymousId?: string }, traits?: Record<string, unknown>) => ({
  type,
  ...(type === "track" ? { event: "Viewed" } : {}),
  messageId: `fg-${++seq}`,
  timestamp: new Date(Date.UTC(2026, 2, 1, 8, seq)).toISOString(),
  ...ids,
  ...(traits ? { traits } : {}),
});
async function post(events: unknown[]) {
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ batch: events }),
  });
  expect(r.status).toBe(200);
}
const admin = (path: string, init: RequestInit = {}) =>
  fetch(`${stack.node.url}${path}`, { ...init, headers: { Authorization: `Bearer ${ADMIN}`, ...init.headers } });
const count = async (sql: string) => Number((await rows<{ n: string }>(stack.db, sql))[0]!.n);
const eventsOf = (ids: string) =>
  count(`SELECT count() AS n FROM tributary.events FINAL WHERE user_id IN (${ids}) OR anonymous_id IN (${ids})`);
const FU = "'fu', 'fa1', 'fa2'";
const snapshots = async () => (await (await admin("/v1/pipelines")).json()).pipelines as any[];

async function replay(pipeline: string) {
  const r = await admin(`/v1/pipelines/${pipeline}/replay`, { method: "POST", body: JSON.stringify({}) });
  expect(r.status).toBe(202);
  const { status } = await r.json();
  for (let i = 0; i < 300; i++) {
    const job = await (await admin(status)).json();
    if (job.progress?.finished || job.error) return job;
    await Bun.sleep(100);
  }
  throw new Error("replay did not finish");
}

test("DELETE /v1/users/<email> removes the user everywhere; a replay and late events bring nothing back; --undo lets new events in", async () => {
  await post([
    ev("identify", { anonymousId: "fa1" }, { email: "fu@example.com", plan: "free" }),
    ev("track", { anonymousId: "fa1" }),
    ev("identify", { userId: "fu", anonymousId: "fa2" }, { email: "fu@example.com", plan: "pro" }),
    ev("track", { userId: "fu" }),
    ev("identify", { userId: "stays" }, { email: "stays@example.com" }),
    ev("track", { userId: "stays" }),
  ]);
  await eventually(stack.db, "SELECT count() AS n FROM tributary.events FINAL", (r: any[]) => Number(r[0].n) === 6);
  await eventually(stack.db, "SELECT count() AS n FROM tributary.identities FINAL", (r: any[]) => Number(r[0].n) === 3);
  await eventually(
    stack.db,
    "SELECT anonymous_ids FROM tributary.users FINAL WHERE user_id = 'fu'",
    (r: any[]) => r.length === 1 && r[0].anonymous_ids.length === 2,
  );

  expect(
    (await fetch(`${stack.node.url}/v1/users/fu`, { method: "DELETE", headers: { Authorization: `Bearer ${KEY}` } }))
      .status,
  ).toBe(401);
  const r = await admin(`/v1/users/${encodeURIComponent("fu@example.com")}`, { method: "DELETE" });
  expect(r.status).toBe(200);
  const report = await r.json();
  expect(report).toMatchObject({
    forgotten: true,
    foundAs: "property",
    userIds: 1,
    anonymousIds: 2,
    tombstones: 3,
    rows: { users: 1, identities: 2, events: 4 },
  });
  expect(report.rows.profile_map).toBeGreaterThanOrEqual(3);
  expect(report.kv.profiles).toBeGreaterThanOrEqual(1);
  expect(await eventsOf(FU)).toBe(0);
  expect(
    await count("SELECT count() AS n FROM tributary.users FINAL WHERE user_id = 'fu' OR has(anonymous_ids, 'fa1')"),
  ).toBe(0);
  expect(
    await count("SELECT count() AS n FROM tributary.identities FINAL WHERE identity IN ('u:fu', 'a:fa1', 'a:fa2')"),
  ).toBe(0);
  expect(
    await count("SELECT count() AS n FROM tributary.profile_map WHERE identity IN ('u:fu', 'a:fa1', 'a:fa2')"),
  ).toBe(0);
  expect(await eventsOf("'stays'")).toBe(2);
  // Forgetting what is no longer known answers 404.
  expect((await admin("/v1/users/nobody-at-all", { method: "DELETE" })).status).toBe(404);

  // Replays of both pipelines and a late redelivery: nothing comes back, each drop is counted.
  for (const p of ["events", "users"]) expect((await replay(p)).error).toBeUndefined();
  expect(await eventsOf(FU)).toBe(0);
  expect(
    await count("SELECT count() AS n FROM tributary.users FINAL WHERE user_id = 'fu' OR has(anonymous_ids, 'fa1')"),
  ).toBe(0);
  await post([
    ev("track", { userId: "fu" }),
    ev("identify", { anonymousId: "fa1" }, { plan: "late" }),
    ev("track", { userId: "stays" }),
  ]);
  await eventually(
    stack.db,
    "SELECT count() AS n FROM tributary.events FINAL WHERE user_id = 'stays'",
    (x: any[]) => Number(x[0].n) === 3,
  );
  const forgotten = await (async () => {
    for (let i = 0; i < 100; i++) {
      const s = await snapshots();
      const e = s.find((x) => x.pipeline === "events");
      if (e?.forgotten >= 2) return s;
      await Bun.sleep(100);
    }
    return snapshots();
  })();
  // Dropped before any filter: both late events of the forgotten ids, by each pipeline.
  expect(forgotten.find((x) => x.pipeline === "events").forgotten).toBe(2);
  expect(forgotten.find((x) => x.pipeline === "users").forgotten).toBe(2);
  await Bun.sleep(500);
  expect(await eventsOf(FU)).toBe(0);
  expect(
    await count("SELECT count() AS n FROM tributary.users FINAL WHERE user_id = 'fu' OR has(anonymous_ids, 'fa1')"),
  ).toBe(0);

  // --undo lifts the tombstones of that forget (all three ids), so new events land again.
  const undo = await forgetCli(["--undo", "fa2"]);
  expect(undo).toMatchObject({ code: 0, json: { undone: true, tombstones: 3 } });
  await post([ev("track", { userId: "fu" })]);
  await eventually(
    stack.db,
    "SELECT count() AS n FROM tributary.events FINAL WHERE user_id = 'fu'",
    (x: any[]) => Number(x[0].n) === 1,
  );
}, 180_000);

async function forgetCli(args: string[]) {
  const p = Bun.spawn([process.execPath, join(ROOT, "scripts/forget.ts"), ...args], {
    cwd: ROOT,
    env: {
      ...process.env,
      NATS_URL: stack.nats.url,
      CLICKHOUSE_URL: stack.ch.url,
      TRIBUTARY_DATABASE: "tributary",
      TRIBUTARY_PIPELINES: stack.node.config.options.dir,
      LOG_LEVEL: "error",
    },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 60_000,
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  const code = await p.exited;
  let json: unknown;
  try {
    json = JSON.parse(out.trim().split("\n").at(-1) ?? "");
  } catch {}
  return { code, json, err };
}

test("scripts/forget.ts <anonymousId> forgets an anonymous visitor; an unknown id fails with code 1", async () => {
  await post([
    ev("identify", { anonymousId: "visitor-1" }, { plan: "trial" }),
    ev("track", { anonymousId: "visitor-1" }),
  ]);
  await eventually(
    stack.db,
    "SELECT count() AS n FROM tributary.users FINAL WHERE has(anonymous_ids, 'visitor-1')",
    (x: any[]) => Number(x[0].n) === 1,
  );
  await eventually(
    stack.db,
    "SELECT count() AS n FROM tributary.events FINAL WHERE anonymous_id = 'visitor-1'",
    (x: any[]) => Number(x[0].n) === 2,
  );
  const r = await forgetCli(["visitor-1"]);
  expect(r).toMatchObject({ code: 0, json: { foundAs: "anonymousId", rows: { users: 1, events: 2, identities: 1 } } });
  expect(await eventsOf("'visitor-1'")).toBe(0);
  const missing = await forgetCli(["never-seen"]);
  expect(missing.code).toBe(1);
  expect(missing.err).toContain('no user, anonymous id or identifier "never-seen" is known');
}, 120_000);

test("forgetting an email forgets every profile holding it, also two userIds kept apart by it", async () => {
  await post([
    ev("identify", { userId: "twin-1" }, { email: "twin@example.com", plan: "a" }),
    ev("identify", { userId: "twin-2" }, { email: "twin@example.com", plan: "b" }),
    ev("track", { userId: "twin-2" }),
  ]);
  await eventually(
    stack.db,
    "SELECT count() AS n FROM tributary.users FINAL WHERE email = 'twin@example.com'",
    (x: any[]) => Number(x[0].n) === 2,
  );
  await eventually(
    stack.db,
    "SELECT count() AS n FROM tributary.events FINAL WHERE user_id IN ('twin-1', 'twin-2')",
    (x: any[]) => Number(x[0].n) === 3,
  );
  const r = await admin("/v1/users/twin%40example.com", { method: "DELETE" });
  expect(r.status).toBe(200);
  const report = await r.json();
  expect(report).toMatchObject({ foundAs: "property", userIds: 2, rows: { users: 2, events: 3 } });
  expect(report.profiles.length).toBe(2);
  expect(await count("SELECT count() AS n FROM tributary.users FINAL WHERE email = 'twin@example.com'")).toBe(0);
  // A plan is no one's identity: forgetting its value finds nobody.
  expect((await admin("/v1/users/b", { method: "DELETE" })).status).toBe(404);
}, 120_000);
