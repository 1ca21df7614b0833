import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startClickHouse, startNats, startTestNode } from "../harness/services.ts";
import { chClient, eventually, rows } from "../harness/warehouse.ts";
import type { RunningNode } from "../../src/node.ts";
import type { ClickHouseClient } from "@clickhouse/client";

/** Backfill a pipeline added later, from the CLI and from the admin API; reruns never double rows. */

const ADMIN = "replay-admin-token";
const file = (pipelines: string) => `connection: shop\nsource: webhook\nwriteKeys: ["key-replay-0001"]\npipelines:\n  - name: all\n    import: events\n${pipelines}`;
const ORDERS = `  - name: orders\n    import: events\n    filter: event = "Order Completed"\n`;

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let node: RunningNode;
let db: ClickHouseClient;

beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  node = await startTestNode(nats.url, { "shop.yaml": file("") }, { clickhouseUrl: ch.url, adminToken: ADMIN, batchMaxAgeMs: 100 });
  await node.pipelinesReady;
  db = chClient(ch.url);
});
afterAll(async () => {
  await node?.stop();
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
});

const post = (events: unknown[]) =>
  fetch(`${node.url}/v1/batch`, { method: "POST", headers: { Authorization: "Bearer key-replay-0001" }, body: JSON.stringify({ batch: events }) }).then((r) => r.status);
const orders = async () => (await rows<any>(db, `SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'orders' ORDER BY message_id`)).map((r) => r.message_id);
const rawCount = async () => Number((await rows<any>(db, `SELECT count() AS c FROM tributary.events WHERE pipeline = 'orders'`))[0].c);

async function cli(...args: string[]) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts/replay.ts"), ...args], {
    env: { ...process.env, NATS_URL: nats.url, CLICKHOUSE_URL: ch.url, TRIBUTARY_PIPELINES: node.config.options.dir, LOG_LEVEL: "error" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err, result: out.trim() ? JSON.parse(out.trim().split("\n").pop()!) : undefined };
}

test("a pipeline added later is backfilled by bun run replay; a rerun and a dry run change nothing", async () => {
  const ev = (id: string, event: string) => ({ type: "track", event, userId: "u", messageId: id });
  expect(await post([ev("r-1", "Order Completed"), ev("r-2", "Viewed"), ev("r-3", "Order Completed")])).toBe(200);
  await eventually<any>(db, `SELECT count() AS c FROM tributary.events FINAL WHERE pipeline = 'all'`, (r) => r[0]?.c === "3");
  writeFileSync(join(node.config.options.dir, "shop.yaml"), file(ORDERS));
  for (let i = 0; i < 100 && !(await node.pipelinesReady).workers.has("shop/orders"); i++) await Bun.sleep(50);
  expect(await post([ev("r-4", "Order Completed")])).toBe(200);
  await eventually<any>(db, `SELECT count() AS c FROM tributary.events FINAL WHERE pipeline = 'orders'`, (r) => r[0]?.c === "1");
  expect(await orders()).toEqual(["r-4"]); // a new pipeline starts from new events

  const dry = await cli("shop", "--pipeline", "orders", "--dry-run");
  expect(dry.code).toBe(0);
  expect(dry.result).toMatchObject({ finished: true, received: 4, kept: 3, loaded: 0, dryRun: true });
  expect(await orders()).toEqual(["r-4"]);

  const run = await cli("shop", "--pipeline", "orders");
  expect(run.code).toBe(0);
  expect(run.result).toMatchObject({ finished: true, received: 4, kept: 3, loaded: 3 });
  expect(run.err).toContain("100.0%");
  expect(await orders()).toEqual(["r-1", "r-3", "r-4"]);

  const again = await cli("shop", "--pipeline", "orders");
  expect(again.result).toMatchObject({ loaded: 3 });
  expect(await orders()).toEqual(["r-1", "r-3", "r-4"]); // exactly once as seen by queries
  expect(await rawCount()).toBeGreaterThanOrEqual(4); // the rows were written again, and collapse

  const bad = await cli("shop", "--pipeline", "nope");
  expect(bad.code).toBe(1);
  expect(bad.err).toContain(`no pipeline named "nope"`);
}, 60_000);

test("POST /v1/pipelines/<name>/replay runs it in the node; --until bounds it", async () => {
  const before = new Date().toISOString();
  await Bun.sleep(20);
  expect(await post([{ type: "track", event: "Order Completed", userId: "u", messageId: "r-late" }])).toBe(200);
  const denied = await fetch(`${node.url}/v1/pipelines/orders/replay`, { method: "POST", headers: { Authorization: "Bearer key-replay-0001" } });
  expect(denied.status).toBe(401);
  const r = await fetch(`${node.url}/v1/pipelines/orders/replay`, { method: "POST", headers: { Authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ until: before }) });
  expect(r.status).toBe(202);
  const { status } = await r.json();
  let job: any;
  for (let i = 0; i < 100; i++) {
    job = await (await fetch(`${node.url}${status}`, { headers: { Authorization: `Bearer ${ADMIN}` } })).json();
    if (job.progress?.finished || job.error) break;
    await Bun.sleep(100);
  }
  expect(job.error).toBeUndefined();
  // Only what was stored before `until`: the four earlier events, not r-late.
  expect(job.progress).toMatchObject({ finished: true, received: 4, kept: 3 });
  expect((await fetch(`${node.url}/v1/pipelines/orders/replay`, { method: "POST", headers: { Authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ since: "not a time" }) })).status).toBe(400);
  expect((await fetch(`${node.url}/v1/pipelines/orders/replay`, { method: "POST", headers: { Authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ bogus: 1 }) })).status).toBe(400);
  expect((await fetch(`${node.url}/v1/pipelines/missing/replay`, { method: "POST", headers: { Authorization: `Bearer ${ADMIN}` } })).status).toBe(404);
});
