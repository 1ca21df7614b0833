import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import type { RunningNode } from "../../src/node.ts";

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
/** A second node with a small in-flight budget, for overload. */
let small: RunningNode;

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(nats.url, { "r.yaml": webhookConnection("reload", ["old-key-0001"]) });
  small = await startTestNode(nats.url, { "s.yaml": webhookConnection("small", ["small-key-0001"]) }, { maxInFlightBytes: 64 * 1024, publishTimeoutMs: 1500 });
});
afterAll(async () => {
  await small?.stop();
  await node?.stop();
  await nats?.cleanup();
});

let n = 0;
const events = (count: number, pad = 0) =>
  JSON.stringify(Array.from({ length: count }, () => ({ type: "track", event: "E", userId: "u", messageId: `n-${n++}`, properties: { pad: "x".repeat(pad) } })));
const post = (key: string, body: string, to = node) => fetch(`${to.url}/v1/events`, { method: "POST", headers: { Authorization: `Bearer ${key}` }, body });

test("/healthz and /readyz report NATS reachability", async () => {
  expect((await fetch(`${node.url}/healthz`)).status).toBe(200);
  const r = await fetch(`${node.url}/readyz`);
  expect(r.status).toBe(200);
  expect((await r.json()).nats).toBe(true);
});

test("a key rotation on disk is picked up without a restart and without failing in-flight requests", async () => {
  const dir = node.config.options.dir;
  const inflight = Array.from({ length: 20 }, () => post("old-key-0001", events(50)));
  writeFileSync(join(dir, "r.yaml"), webhookConnection("reload", ["new-key-0002"]));
  const statuses = await Promise.all(inflight.map(async (p) => (await p).status));
  expect(statuses.every((s) => s === 200 || s === 401)).toBe(true);
  for (let i = 0; i < 50 && (await post("new-key-0002", events(1))).status !== 200; i++) await Bun.sleep(50);
  expect((await post("new-key-0002", events(1))).status).toBe(200);
  expect((await post("old-key-0001", events(1))).status).toBe(401);
  // A broken edit is refused; the running configuration stays.
  writeFileSync(join(dir, "r.yaml"), "connection: reload\nsource: webhook\nwriteKeys: []\n");
  await Bun.sleep(400);
  expect(node.config.lastError).toMatch(/writeKeys/);
  expect((await post("new-key-0002", events(1))).status).toBe(200);
  writeFileSync(join(dir, "r.yaml"), webhookConnection("reload", ["new-key-0002"]));
});

test("overload gets 429 with Retry-After at once, nothing of it stored; a hung JetStream gets 503", async () => {
  nats.pause(); // JetStream holds the connection but acknowledges nothing
  let resumed = false;
  try {
    const bodies = Array.from({ length: 30 }, () => events(4, 2000)); // ~8 KiB each, 64 KiB may be in flight
    const started = Date.now();
    const results = await Promise.all(
      bodies.map(async (b) => {
        const r = await post("small-key-0001", b, small);
        return { status: r.status, retryAfter: r.headers.get("retry-after"), ms: Date.now() - started, ids: (JSON.parse(b) as { messageId: string }[]).map((e) => e.messageId) };
      }),
    );
    const tooMany = results.filter((r) => r.status === 429);
    const unavailable = results.filter((r) => r.status === 503);
    expect(tooMany.length).toBeGreaterThan(0);
    expect(unavailable.length).toBeGreaterThan(0);
    expect(tooMany.length + unavailable.length).toBe(results.length);
    for (const r of [...tooMany, ...unavailable]) expect(Number(r.retryAfter)).toBeGreaterThan(0);
    // Overload is refused straight away; the others waited for the publish timeout.
    for (const r of tooMany) expect(r.ms).toBeLessThan(1000);
    for (const r of unavailable) expect(r.ms).toBeGreaterThanOrEqual(1400);
    nats.resume();
    resumed = true;
    for (let i = 0; i < 100 && (await post("small-key-0001", events(1), small)).status !== 200; i++) await Bun.sleep(100);
    expect((await post("small-key-0001", events(1), small)).status).toBe(200);
    const stored = new Set((await storedEvents(small.bus, "small")).map((e) => e.messageId));
    for (const r of tooMany) for (const id of r.ids) expect(stored.has(id)).toBe(false);
  } finally {
    if (!resumed) nats.resume();
  }
});

test("JetStream down: 503 with Retry-After, then recovery", async () => {
  await nats.kill();
  try {
    const r = await post("new-key-0002", events(3));
    expect(r.status).toBe(503);
    expect(Number(r.headers.get("retry-after"))).toBeGreaterThan(0);
  } finally {
    await nats.start();
  }
  let status = 0;
  for (let i = 0; i < 100 && (status = (await post("new-key-0002", events(1))).status) !== 200; i++) await Bun.sleep(100);
  expect(status).toBe(200);
});
