import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import type { ClickHouseClient } from "@clickhouse/client";
import { pipelinesDir, startClickHouse, startNats } from "../harness/services.ts";
import { chClient, eventually } from "../harness/warehouse.ts";
import { NodeProcess } from "../harness/node-process.ts";

/**
 * A JSONata expression that never ends (issue 15, item 4) must fail its own event only. The node
 * runs in its own process: on a node without the limit the hostile event hangs it, and the
 * requests below time out instead of hanging this test runner with it.
 */

const ADMIN = "admin-token-expr-0001";
// An infinite tail-call loop: jsonata's trampoline keeps it in constant stack, so nothing overflows.
const hostile = (test: string, otherwise: string) =>
  `'${test} ? ($f := function($x){ $f($x + 1) }; $f(0)) : ${otherwise}'`;

const files = {
  "attacked.yaml": `connection: attacked
source: webhook
writeKeys: ["key-attacked-0001"]
pipelines:
  - name: guarded
    import: events
    filter: ${hostile('event = "attack"', "true")}
`,
  "bystander.yaml": `connection: bystander
source: webhook
writeKeys: ["key-bystander-0001"]
pipelines:
  - name: all
    import: events
`,
  "hooks.yaml": `connection: hooks
source: raw
table: hooks_raw
insecure: true
events: ${hostile('kind = "attack"', "$")}
pipelines:
  - name: derived
    import: events
`,
};

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let db: ClickHouseClient;
let node: NodeProcess;
let dir: string;

beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  db = chClient(ch.url);
  dir = pipelinesDir(files);
  node = new NodeProcess({
    NATS_URL: nats.url,
    CLICKHOUSE_URL: ch.url,
    TRIBUTARY_PIPELINES: dir,
    TRIBUTARY_ADMIN_TOKEN: ADMIN,
    TRIBUTARY_BATCH_MAX_AGE_MS: "200",
    TRIBUTARY_EXPRESSION_TIMEOUT_MS: "200",
  });
  await node.start();
  await node.ready(60_000);
});
afterAll(async () => {
  await node?.stop();
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// Generous: the machine may be busy. A hung node never answers at all.
const within = () => AbortSignal.timeout(15_000);

const post = (key: string, events: unknown[]) =>
  fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
    signal: within(),
  });

interface PipelineInfo {
  connection: string;
  pipeline: string;
  failed: number;
  loaded: number;
  lastErrors: { messageId?: string; error: string }[];
}

async function pipelines(): Promise<{ pipelines: PipelineInfo[] }> {
  const r = await fetch(`${node.url}/v1/pipelines`, {
    headers: { Authorization: `Bearer ${ADMIN}` },
    signal: within(),
  });
  expect(r.status).toBe(200);
  return (await r.json()) as { pipelines: PipelineInfo[] };
}

async function healthy(): Promise<void> {
  const r = await fetch(`${node.url}/healthz`, { signal: within() });
  expect(r.status).toBe(200);
}

test("a filter that never ends fails its own event: listed with its messageId, the node keeps answering, other events land", async () => {
  const normal = (prefix: string, n: number) =>
    Array.from({ length: n }, (_, i) => ({ type: "track", event: "Viewed", userId: "u", messageId: `${prefix}-${i}` }));
  const first = await post("key-attacked-0001", [
    ...normal("before", 3),
    { type: "track", event: "attack", userId: "x", messageId: "attack-1" },
    ...normal("after", 3),
  ]);
  expect(first.status).toBe(200);
  // While the hostile event is (or was) being evaluated, the node answers and takes other traffic.
  await healthy();
  const other = await post("key-bystander-0001", normal("other", 5));
  expect(other.status).toBe(200);
  await healthy();

  let info: PipelineInfo | undefined;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    info = (await pipelines()).pipelines.find((p) => p.connection === "attacked" && p.pipeline === "guarded");
    if (info?.lastErrors.some((e) => e.messageId === "attack-1")) break;
    await Bun.sleep(250);
  }
  const err = info?.lastErrors.find((e) => e.messageId === "attack-1");
  expect(err?.error).toContain("filter failed");
  expect(err?.error).toContain("timeout");
  expect(info!.failed).toBeGreaterThanOrEqual(1);

  const landed = await eventually<{ m: string }>(
    db,
    `SELECT message_id AS m FROM tributary.events FINAL WHERE connection IN ('attacked', 'bystander') ORDER BY m`,
    (r) => r.length >= 11,
    60_000,
  );
  const ids = landed.map((r) => r.m);
  expect(ids).not.toContain("attack-1");
  expect(ids.sort()).toEqual(
    [...normal("after", 3), ...normal("before", 3), ...normal("other", 5)].map((e) => e.messageId).sort(),
  );
  await healthy();
}, 180_000);

test("a raw webhook whose events: expression never ends stores the delivery and reports the expression's failure, as for any events: error", async () => {
  const r = await fetch(`${node.url}/v1/webhooks/hooks`, {
    method: "POST",
    body: JSON.stringify({ kind: "attack", id: 1 }),
    signal: within(),
  });
  expect(r.status).toBe(200);
  const answer = (await r.json()) as { accepted: number; events?: { accepted: number; error?: string } };
  expect(answer.accepted).toBe(1);
  expect(answer.events?.accepted).toBe(0);
  expect(answer.events?.error).toContain("events expression failed");
  expect(answer.events?.error).toContain("timeout");
  await healthy();
  // A harmless delivery on the same connection still derives its event.
  const ok = await fetch(`${node.url}/v1/webhooks/hooks`, {
    method: "POST",
    body: JSON.stringify({ kind: "fine", messageId: "hook-ok", type: "track", event: "Fine", userId: "u" }),
    signal: within(),
  });
  expect(ok.status).toBe(200);
  expect(await ok.json()).toMatchObject({ accepted: 1, events: { accepted: 1 } });
}, 120_000);

test("a message full of hostile events costs its pipeline the limit per event, but the node answers between them", async () => {
  // 32 events x 200 ms = 6.4 s of filter time, in stream messages of about 8 events (~1.6 s each):
  // each fails alone, and the node answers throughout (its pipelines run in a worker process).
  const info = async () =>
    (await pipelines()).pipelines.find((p) => p.connection === "attacked" && p.pipeline === "guarded")!;
  const before = (await info()).failed;
  const attacks = Array.from({ length: 32 }, (_, i) => ({
    type: "track",
    event: "attack",
    userId: "x",
    messageId: `flood-${i}`,
  }));
  expect((await post("key-attacked-0001", attacks)).status).toBe(200);
  let slowest = 0;
  let failed = before;
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline && failed < before + 32) {
    const t0 = performance.now();
    await healthy();
    failed = (await info()).failed;
    slowest = Math.max(slowest, performance.now() - t0);
    await Bun.sleep(100);
  }
  expect(failed).toBe(before + 32);
  // Each answer came within one limit (200 ms) plus a busy machine's slack, well below the seconds
  // one message of the flood takes.
  expect(slowest).toBeLessThan(2_000);
}, 120_000);
