import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";
import { connectWarehouse } from "../../src/sink/clickhouse/server.ts";

/** Backfill a pipeline added later, from the CLI and from the admin API; reruns never double rows. */

const ADMIN = "replay-admin-token";
const file = (pipelines: string) =>
  `connection: shop\nsource: webhook\nwriteKeys: ["key-replay-0001"]\npipelines:\n  - name: all\n    import: events\n${pipelines}`;
/** A replay's own connection to ClickHouse, as `bun run replay` has. */
const testWarehouse = () =>
  connectWarehouse({ url: stack.ch.url, username: "default", password: "", database: "tributary" });
const ORDERS = `  - name: orders\n    import: events\n    filter: event = "Order Completed"\n`;

const stack = useStack({ "shop.yaml": file("") }, { adminToken: ADMIN });

const post = (events: unknown[]) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: "Bearer key-replay-0001" },
    body: JSON.stringify({ batch: events }),
  }).then((r) => r.status);
const orders = async () =>
  (
    await rows<any>(
      stack.db,
      `SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'orders' ORDER BY message_id`,
    )
  ).map((r) => r.message_id);
const rawCount = async () =>
  Number((await rows<any>(stack.db, `SELECT count() AS c FROM tributary.events WHERE pipeline = 'orders'`))[0].c);

async function cli(...args: string[]) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts/replay.ts"), ...args], {
    env: {
      ...process.env,
      NATS_URL: stack.nats.url,
      CLICKHOUSE_URL: stack.ch.url,
      TRIBUTARY_PIPELINES: stack.node.config.options.dir,
      LOG_LEVEL: "error",
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err, result: out.trim() ? JSON.parse(out.trim().split("\n").pop()!) : undefined };
}

test("a pipeline added later is backfilled by bun run replay; a rerun and a dry run change nothing", async () => {
  const ev = (id: string, event: string) => ({ type: "track", event, userId: "u", messageId: id });
  expect(await post([ev("r-1", "Order Completed"), ev("r-2", "Viewed"), ev("r-3", "Order Completed")])).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT count() AS c FROM tributary.events FINAL WHERE pipeline = 'all'`,
    (r) => r[0]?.c === "3",
  );
  writeFileSync(join(stack.node.config.options.dir, "shop.yaml"), file(ORDERS));
  for (let i = 0; i < 100 && !(await (await stack.node.pipelinesReady).snapshot("shop/orders")); i++)
    await Bun.sleep(50);
  expect(await post([ev("r-4", "Order Completed")])).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT count() AS c FROM tributary.events FINAL WHERE pipeline = 'orders'`,
    (r) => r[0]?.c === "1",
  );
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
  const denied = await fetch(`${stack.node.url}/v1/pipelines/orders/replay`, {
    method: "POST",
    headers: { Authorization: "Bearer key-replay-0001" },
  });
  expect(denied.status).toBe(401);
  const r = await fetch(`${stack.node.url}/v1/pipelines/orders/replay`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN}` },
    body: JSON.stringify({ until: before }),
  });
  expect(r.status).toBe(202);
  const { status } = await r.json();
  let job: any;
  for (let i = 0; i < 100; i++) {
    job = await (await fetch(`${stack.node.url}${status}`, { headers: { Authorization: `Bearer ${ADMIN}` } })).json();
    if (job.progress?.finished || job.error) break;
    await Bun.sleep(100);
  }
  expect(job.error).toBeUndefined();
  // Only what was stored before `until`: the four earlier events, not r-late.
  expect(job.progress).toMatchObject({ finished: true, received: 4, kept: 3 });
  expect(
    (
      await fetch(`${stack.node.url}/v1/pipelines/orders/replay`, {
        method: "POST",
        headers: { Authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({ since: "not a time" }),
      })
    ).status,
  ).toBe(400);
  expect(
    (
      await fetch(`${stack.node.url}/v1/pipelines/orders/replay`, {
        method: "POST",
        headers: { Authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({ bogus: 1 }),
      })
    ).status,
  ).toBe(400);
  expect(
    (
      await fetch(`${stack.node.url}/v1/pipelines/missing/replay`, {
        method: "POST",
        headers: { Authorization: `Bearer ${ADMIN}` },
      })
    ).status,
  ).toBe(404);
});

test("after a filter change, a replay adds the newly kept rows and no duplicates of the old ones", async () => {
  const { replay } = await import("../../src/pipeline/replay.ts");
  const warehouse = await testWarehouse();
  expect(await post([{ type: "track", event: "Refund", userId: "u", messageId: "r-refund" }])).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT count() AS c FROM tributary.events FINAL WHERE message_id = 'r-refund' AND pipeline = 'all'`,
    (r) => r[0]?.c === "1",
  );
  const widened = ORDERS.replace(`event = "Order Completed"`, `event in ["Order Completed", "Refund"]`);
  writeFileSync(join(stack.node.config.options.dir, "shop.yaml"), file(widened));
  for (
    let i = 0;
    i < 100 && stack.node.config.current.connections.get("shop")!.pipelines![1]!.filter!.includes("Refund") === false;
    i++
  )
    await Bun.sleep(50);
  const before = await rawCount();
  const p = await replay(stack.node.bus, warehouse, stack.node.config.current, {
    connection: "shop",
    pipeline: "orders",
    since: new Date(Date.now() - 3600_000).toISOString(),
  });
  expect(p.finished).toBe(true);
  expect(await orders()).toEqual(["r-1", "r-3", "r-4", "r-late", "r-refund"]);
  // Every old order was written again, and shows once.
  expect(await rawCount()).toBe(before + 5);
});

test("an interrupted replay resumes after the last batch it loaded", async () => {
  const { replay } = await import("../../src/pipeline/replay.ts");
  const warehouse = await testWarehouse();
  const ids = Array.from({ length: 3000 }, (_, i) => `bulk-${String(i).padStart(4, "0")}`);
  for (let i = 0; i < ids.length; i += 500) {
    expect(
      await post(
        ids.slice(i, i + 500).map((messageId) => ({ type: "track", event: "Refund", userId: "u", messageId })),
      ),
    ).toBe(200);
  }
  const args = { connection: "shop", pipeline: "orders", fromSeq: 1, batchRows: 500 };
  const abort = new AbortController();
  const first = await replay(stack.node.bus, warehouse, stack.node.config.current, {
    ...args,
    signal: abort.signal,
    onProgress: (p) => p.loaded >= 500 && abort.abort(),
  });
  expect(first.finished).toBe(false);
  expect(first.loaded).toBeGreaterThanOrEqual(500);
  expect(first.loaded).toBeLessThan(3000);
  const second = await replay(stack.node.bus, warehouse, stack.node.config.current, args);
  expect(second).toMatchObject({ finished: true, resumed: true });
  // It went on from where the first stopped instead of starting over.
  expect(second.received).toBeLessThan(3000 + 10 - first.loaded + 500);
  expect(first.loaded + second.loaded).toBeGreaterThanOrEqual(3000);
  const n = Number(
    (
      await rows<any>(
        stack.db,
        `SELECT count() AS c FROM tributary.events FINAL WHERE pipeline = 'orders' AND message_id LIKE 'bulk-%'`,
      )
    )[0].c,
  );
  expect(n).toBe(3000);
  // Finished: its consumer is gone, so the same replay would start afresh.
  const third = await replay(stack.node.bus, warehouse, stack.node.config.current, args);
  expect(third.resumed).toBe(false);
}, 60_000);

test("bun run check --explain uses the connection's last stored event", async () => {
  expect(await post([{ type: "track", event: "Order Completed", userId: "u", messageId: "explain-me" }])).toBe(200);
  const p = Bun.spawn(
    [
      process.execPath,
      join(import.meta.dir, "../../scripts/check.ts"),
      stack.node.config.options.dir,
      "--explain",
      "shop",
    ],
    {
      env: { ...process.env, NATS_URL: stack.nats.url, LOG_LEVEL: "error" },
      stdout: "pipe",
      stderr: "pipe",
    },
  );
  const out = await new Response(p.stdout).text();
  expect(await p.exited).toBe(0);
  expect(out).toContain("last stored event:");
  expect(out).toContain(`"messageId":"explain-me"`);
  expect(out).toContain(`- orders (import: events): kept by event in ["Order Completed", "Refund"]`);
});
