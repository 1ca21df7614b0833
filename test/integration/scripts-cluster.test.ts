import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { busOptionsOf, connectBus } from "../../src/bus/connection.ts";
import { ensureDlqStream, publishDeadLetters } from "../../src/bus/dead-letters.ts";
import { defaults } from "../../src/config/env.ts";
import { pipelinesDir, startClickHouse, startNats } from "../harness/services.ts";

/**
 * The tools connect to ClickHouse as the node does (warehouseOptionsOf): TRIBUTARY_CLICKHOUSE_CLUSTER
 * included, so on a replicated warehouse what they create is created ON CLUSTER. A cluster the
 * server does not know is refused by each tool as by the node, which shows they passed it on.
 */
let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let dir: string;
beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  dir = pipelinesDir({
    "customer-model.yaml": "customerModel:\n  email: string\nidentifiers: [email]\n",
    "shop.yaml": "connection: shop\nsource: webhook\nwriteKeys: [shop-write-key]\ninsecure: true\n",
  });
  // A row to redrive: dlq connects to ClickHouse only to insert one.
  const bus = await connectBus(busOptionsOf({ ...defaults, natsUrl: nats.url }));
  await ensureDlqStream(bus.jsm, 1);
  await publishDeadLetters(bus, [
    { connection: "shop", pipeline: "events", reason: "test", at: new Date().toISOString(), event: { a: 1 } },
  ]);
  await bus.close();
}, 120_000);
afterAll(async () => {
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
  rmSync(dir, { recursive: true, force: true });
});

const CLUSTER = "tributary_no_such_cluster";

async function run(script: string, ...args: string[]) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, `../../scripts/${script}.ts`), ...args], {
    env: {
      ...process.env,
      NATS_URL: nats.url,
      CLICKHOUSE_URL: ch.url,
      TRIBUTARY_PIPELINES: dir,
      TRIBUTARY_CLICKHOUSE_CLUSTER: CLUSTER,
      LOG_LEVEL: "error",
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}

for (const [script, args] of [
  ["replay", ["shop", "--pipeline", "events"]],
  ["forget", ["someone@example.com"]],
  ["resolve", []],
  ["dlq", ["shop", "--redrive"]],
] as const)
  test(`${script} connects with TRIBUTARY_CLICKHOUSE_CLUSTER`, async () => {
    const r = await run(script, ...args);
    expect(r.err).toContain(`TRIBUTARY_CLICKHOUSE_CLUSTER: the server has no cluster "${CLUSTER}"`);
    expect(r.code).not.toBe(0);
  }, 60_000);
