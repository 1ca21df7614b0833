import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startClickHouse, startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { chClient, eventually } from "../harness/warehouse.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Issue 16 #2: a pipeline gets every event accepted from the moment the node answers, however long
 * it takes to start (a Python transform loads Pyodide for seconds); a pipeline added by a
 * configuration change gets every event from the moment the change was loaded.
 */

const MODEL = "customerModel:\n  plan: string\n";
const python = (name: string) => `  - name: ${name}
    import: users
    transform:
      python: |
        def transform(event):
            return {"plan": (event.get("traits") or {}).get("plan")}
`;
const connection = (name: string, key: string) =>
  webhookConnection(name, [key], `pipelines:\n${python("profiles")}  - name: all\n    import: events\n`);

const identifies = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    type: "identify",
    userId: `${prefix}-${i}`,
    messageId: `${prefix}-m${i}`,
    traits: { plan: "pro" },
  }));
const post = (node: RunningNode, key: string, events: unknown[]) =>
  fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  }).then((r) => r.status);

test("events sent the moment /healthz answers, and the moment a configuration change is loaded, reach every pipeline, Python ones included", async () => {
  const [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  const db = chClient(ch.url);
  const node = await startTestNode(
    nats.url,
    { "model.yaml": MODEL, "early.yaml": connection("early", "key-early-0001") },
    { clickhouseUrl: ch.url, batchMaxAgeMs: 100 },
  );
  try {
    while (
      (await fetch(`${node.url}/healthz`).then(
        (r) => r.status,
        () => 0,
      )) !== 200
    )
      await Bun.sleep(5);
    // Ten requests over the first second, while the Python pipeline is still loading.
    for (let i = 0; i < 10; i++) {
      expect(await post(node, "key-early-0001", identifies(`early${i}`, 10))).toBe(200);
      await Bun.sleep(100);
    }
    const users = (prefix: string) => `SELECT count() AS c FROM tributary.users FINAL WHERE user_id LIKE '${prefix}%'`;
    const events = (connection: string) =>
      `SELECT pipeline, count() AS c FROM tributary.events FINAL WHERE connection = '${connection}' GROUP BY pipeline`;
    await eventually<any>(db, users("early"), (r) => r[0]?.c === "100", 90_000);
    expect(await eventually<any>(db, events("early"), (r) => r[0]?.c === "100", 30_000)).toEqual([
      { pipeline: "all", c: "100" },
    ]);
    await node.pipelinesReady;

    // A configuration change adds a connection whose Python pipeline loads first: events sent as
    // soon as the change is loaded reach both of its pipelines.
    writeFileSync(join(node.config.options.dir, "late.yaml"), connection("late", "key-late-0001"));
    while (!node.config.current.connections.has("late")) await Bun.sleep(5);
    for (let i = 0; i < 10; i++) {
      expect(await post(node, "key-late-0001", identifies(`late${i}`, 10))).toBe(200);
      await Bun.sleep(100);
    }
    await eventually<any>(db, users("late"), (r) => r[0]?.c === "100", 90_000);
    expect(await eventually<any>(db, events("late"), (r) => r[0]?.c === "100", 30_000)).toEqual([
      { pipeline: "all", c: "100" },
    ]);
  } finally {
    await node.stop();
    await db.close();
    await Promise.all([nats.cleanup(), ch.cleanup()]);
  }
});
