import { expect, test } from "bun:test";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually } from "../harness/warehouse.ts";

/**
 * Issue 18: a row ClickHouse refuses is dead-lettered with its reason by a replay exactly as by the
 * live pipeline (both go through the one Runner and the ClickHouse sink), so `dlq` shows it.
 * Before, a replay only counted the refused rows.
 */

const stack = useStack({
  "shop.yaml": `connection: shop\nsource: webhook\nwriteKeys: ["key-rdl-0001"]\npipelines:\n  - name: all\n    import: events\n`,
});

const env = () => ({
  ...process.env,
  NATS_URL: stack.nats.url,
  CLICKHOUSE_URL: stack.ch.url,
  TRIBUTARY_PIPELINES: stack.node.config.options.dir,
  LOG_LEVEL: "error",
});
async function run(script: string, ...args: string[]) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts", script), ...args], {
    env: env(),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}
const letters = async () =>
  (await run("dlq.ts", "shop", "--pipeline", "all", "--json")).out
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));

test("a row ClickHouse refuses is dead-lettered with its reason by the live pipeline and by a replay", async () => {
  // An operator's mistake: `event` retyped to a number (the table is still empty, so the ALTER is immediate).
  await stack.db.command({ query: "ALTER TABLE tributary.events MODIFY COLUMN event Nullable(UInt64)" });
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: "Bearer key-rdl-0001" },
    body: JSON.stringify({
      batch: [
        { type: "identify", userId: "u1", messageId: "rdl-ok" },
        { type: "track", event: "Order Completed", userId: "u1", messageId: "rdl-bad" },
      ],
    }),
  });
  expect(r.status).toBe(200);
  await eventually<any>(
    stack.db,
    "SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'all'",
    (x) => x.length === 1 && x[0].message_id === "rdl-ok",
  );
  let live: any[] = [];
  for (let i = 0; i < 100 && live.length < 1; i++) {
    live = await letters();
    if (!live.length) await Bun.sleep(100);
  }
  expect(live).toHaveLength(1);
  expect(live[0]).toMatchObject({ connection: "shop", pipeline: "all", table: "events", messageId: "rdl-bad" });
  expect(live[0].reason).toMatch(/Code: \d+/);

  const replay = await run("replay.ts", "shop", "--pipeline", "all");
  expect(replay.code).toBe(0);
  expect(JSON.parse(replay.out.trim().split("\n").pop()!)).toMatchObject({
    finished: true,
    received: 2,
    kept: 2,
    loaded: 1,
    failed: 1,
  });
  const after = await letters();
  expect(after).toHaveLength(2);
  expect(after[1]).toMatchObject({ connection: "shop", pipeline: "all", table: "events", messageId: "rdl-bad" });
  expect(after[1].reason).toBe(live[0].reason);
}, 60_000);
