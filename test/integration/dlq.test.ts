import { expect, test } from "bun:test";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/**
 * A table whose column type refuses some rows (an operator's mistake): the refused rows go to the
 * dead-letter stream with ClickHouse's reason, the rest land; after the fix, --redrive lands them.
 */

const ADMIN = "dlq-admin-token";
const stack = useStack(
  { "n.yaml": `connection: nums\nsource: raw\nbody: json-array\ninsecure: true\ntable: numbers\n` },
  { adminToken: ADMIN },
  async (db) => {
    await db.command({ query: "CREATE DATABASE IF NOT EXISTS tributary" });
    // Pre-created with `body UInt64`: numeric bodies fit, others are refused for their content.
    await stack.db.command({
      query: `CREATE TABLE tributary.numbers (connection String, delivery_id String, row_index UInt32, received_at UInt64, body UInt64, headers String) ENGINE = ReplacingMergeTree() ORDER BY (connection, delivery_id, row_index)`,
    });
  },
);

async function dlq(...args: string[]) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts/dlq.ts"), ...args], {
    env: { ...process.env, NATS_URL: stack.nats.url, CLICKHOUSE_URL: stack.ch.url, LOG_LEVEL: "error" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}

test("refused rows are dead-lettered with the reason, counted, listed, and redriven after the fix", async () => {
  const r = await fetch(`${stack.node.url}/v1/webhooks/nums`, {
    method: "POST",
    body: JSON.stringify([1, 2, "three", 4, "five"]),
  });
  expect(r.status).toBe(200);
  await eventually<any>(stack.db, "SELECT count() AS c FROM tributary.numbers FINAL", (x) => x[0]?.c === "3");
  let p: any;
  for (let i = 0; i < 50; i++) {
    p = (
      await (await fetch(`${stack.node.url}/v1/pipelines`, { headers: { Authorization: `Bearer ${ADMIN}` } })).json()
    ).pipelines[0];
    if (p.deadLetters === 2) break;
    await Bun.sleep(100);
  }
  expect(p).toMatchObject({ connection: "nums", loaded: 3, deadLettered: 2, deadLetters: 2, failed: 2 });
  const metrics = await (
    await fetch(`${stack.node.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN}` } })
  ).text();
  expect(metrics).toMatch(/tributary_pipeline_dead_letters\{connection="nums",pipeline="\(raw table\)"\} 2/);

  const listed = await dlq("nums", "--json");
  expect(listed.code).toBe(0);
  const letters = listed.out
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  expect(letters.map((l) => JSON.parse(JSON.stringify(l.event.body)))).toEqual(['"three"', '"five"']);
  for (const l of letters) {
    expect(l).toMatchObject({ connection: "nums", table: "numbers" });
    expect(l.reason).toMatch(/Code: \d+/);
  }

  // Before the fix, a redrive lands nothing and keeps them.
  const early = await dlq("nums", "--redrive");
  expect(early.code).toBe(1);
  expect(early.err).toContain("0 landed and removed, 2 still refused");

  await stack.db.command({ query: "ALTER TABLE tributary.numbers MODIFY COLUMN body String" });
  const fixed = await dlq("nums", "--redrive");
  expect(fixed.code).toBe(0);
  expect(fixed.err).toContain("2 landed and removed, 0 still refused");
  const bodies = (await rows<any>(stack.db, "SELECT body FROM tributary.numbers FINAL ORDER BY row_index")).map(
    (x) => x.body,
  );
  expect(bodies).toEqual(["1", "2", '"three"', "4", '"five"']);
  expect((await dlq("nums")).err).toContain("0 dead letter(s)");
});

test("a users row refused after the table drifted from the Customer Model lands once when the model is fixed and the letter redriven", async () => {
  const { writeFileSync } = await import("node:fs");
  const dir = stack.node.config.options.dir;
  writeFileSync(join(dir, "customer-model.yaml"), "customerModel:\n  plan: string\n");
  writeFileSync(
    join(dir, "people.yaml"),
    `connection: people\nsource: webhook\nwriteKeys: ["key-people-0001"]\npipelines:\n  - name: profiles\n    import: users\n    transform:\n      mapping:\n        plan: traits.plan\n`,
  );
  const manager = await stack.node.pipelinesReady;
  for (let i = 0; i < 100 && !(await manager.snapshot("people/profiles")); i++) await Bun.sleep(50);
  expect(await manager.snapshot("people/profiles")).toBeDefined();
  // Someone retypes the column by hand: string plans no longer fit.
  await stack.db.command({ query: "ALTER TABLE tributary.users MODIFY COLUMN plan Nullable(UInt64)" });
  const post = (events: unknown[]) =>
    fetch(`${stack.node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: "Bearer key-people-0001" },
      body: JSON.stringify({ batch: events }),
    });
  expect((await post([{ type: "identify", userId: "dl-1", messageId: "dl-m1", traits: { plan: "pro" } }])).status).toBe(
    200,
  );
  let letters: any[] = [];
  for (let i = 0; i < 100 && !letters.length; i++) {
    await Bun.sleep(100);
    letters = (await dlq("people", "--json")).out
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }
  expect(letters).toHaveLength(1);
  expect(letters[0]).toMatchObject({ connection: "people", pipeline: "profiles", table: "users" });
  expect(await rows(stack.db, "SELECT * FROM tributary.users FINAL WHERE user_id = 'dl-1'")).toEqual([]);

  // The fix: the Customer Model says string and allows the migration back.
  writeFileSync(join(dir, "customer-model.yaml"), "customerModel:\n  plan: string\nmigrate: true\n");
  await eventually<any>(
    stack.db,
    "SELECT type FROM system.columns WHERE database = 'tributary' AND table = 'users' AND name = 'plan'",
    (r) => r[0]?.type === "Nullable(String)",
  );
  const redrive = await dlq("people", "--redrive");
  expect(redrive.err).toContain("1 landed and removed, 0 still refused");
  expect(await rows(stack.db, "SELECT user_id, plan FROM tributary.users FINAL WHERE user_id = 'dl-1'")).toEqual([
    { user_id: "dl-1", plan: "pro" },
  ]);
  expect((await dlq("people", "--redrive")).err).toContain("0 landed and removed, 0 still refused");
  expect(await rows(stack.db, "SELECT count() AS c FROM tributary.users FINAL WHERE user_id = 'dl-1'")).toEqual([
    { c: "1" },
  ]);
});
