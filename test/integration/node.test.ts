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
/** The small node's publish timeout: long, so an answer at once and one after the timeout cannot be confused on a slow machine. */
const PUBLISH_TIMEOUT_MS = 5000;

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(nats.url, { "r.yaml": webhookConnection("reload", ["old-key-0001"]) });
  small = await startTestNode(
    nats.url,
    { "s.yaml": webhookConnection("small", ["small-key-0001"]) },
    { maxInFlightBytes: 64 * 1024, publishTimeoutMs: PUBLISH_TIMEOUT_MS },
  );
});
afterAll(async () => {
  await small?.stop();
  await node?.stop();
  await nats?.cleanup();
});

let n = 0;
const events = (count: number, pad = 0) =>
  JSON.stringify(
    Array.from({ length: count }, () => ({
      type: "track",
      event: "E",
      userId: "u",
      messageId: `n-${n++}`,
      properties: { pad: "x".repeat(pad) },
    })),
  );
const post = (key: string, body: string, to = node) =>
  fetch(`${to.url}/v1/events`, { method: "POST", headers: { Authorization: `Bearer ${key}` }, body });

test("/healthz and /readyz report NATS reachability", async () => {
  expect((await fetch(`${node.url}/healthz`)).status).toBe(200);
  const r = await fetch(`${node.url}/readyz`);
  expect(r.status).toBe(200);
  // Without the admin token, only ok (issue 16 #10; test/integration/edge-admin.test.ts).
  expect(await r.json()).toEqual({ ok: true });
});

/** Polls `check` until it holds or `ms` pass; returns whether it held. */
async function until(check: () => boolean | Promise<boolean>, ms = 30_000): Promise<boolean> {
  for (const deadline = Date.now() + ms; ; await Bun.sleep(50)) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
  }
}

test("a key rotation on disk is picked up without a restart and without failing in-flight requests", async () => {
  const dir = node.config.options.dir;
  // Requests the node is already handling when the key changes: headers (with the old key) sent,
  // the body held back until the new configuration is live.
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  // Over every thread answering HTTP (the kernel spreads connections between them).
  const inFlight = async () => (await node.ingestCounts()).inFlightRequests;
  const before = await inFlight();
  const inflight = Array.from({ length: 20 }, () => {
    const body = new TextEncoder().encode(events(50));
    const half = body.length >> 1;
    let step = 0;
    const stream = new ReadableStream<Uint8Array>({
      async pull(c) {
        if (step++ === 0) return c.enqueue(body.subarray(0, half));
        await held;
        c.enqueue(body.subarray(half));
        c.close();
      },
    });
    return fetch(`${node.url}/v1/events`, {
      method: "POST",
      headers: { Authorization: "Bearer old-key-0001" },
      body: stream,
      duplex: "half",
    } as RequestInit);
  });
  expect(await until(async () => (await inFlight()) >= before + 20)).toBe(true);
  writeFileSync(join(dir, "r.yaml"), webhookConnection("reload", ["new-key-0002"]));
  expect(await until(async () => (await post("new-key-0002", events(1))).status === 200)).toBe(true);
  // Each thread loads the change on its own, within moments of the others.
  expect(await until(async () => (await post("old-key-0001", events(1))).status === 401)).toBe(true);
  for (let i = 0; i < 10; i++) expect((await post("old-key-0001", events(1))).status).toBe(401);
  release();
  // Every request that was in flight with the old key completes as it began.
  const statuses = await Promise.all(inflight.map(async (p) => (await p).status));
  expect(statuses).toEqual(Array(20).fill(200));
  // A broken edit is refused; the running configuration stays.
  writeFileSync(join(dir, "r.yaml"), "connection: reload\nsource: webhook\nwriteKeys: []\n");
  expect(await until(() => /writeKeys/.test(node.config.lastError ?? ""))).toBe(true);
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
        return {
          status: r.status,
          retryAfter: r.headers.get("retry-after"),
          ms: Date.now() - started,
          ids: (JSON.parse(b) as { messageId: string }[]).map((e) => e.messageId),
        };
      }),
    );
    const tooMany = results.filter((r) => r.status === 429);
    const unavailable = results.filter((r) => r.status === 503);
    expect(tooMany.length).toBeGreaterThan(0);
    expect(unavailable.length).toBeGreaterThan(0);
    expect(tooMany.length + unavailable.length).toBe(results.length);
    for (const r of [...tooMany, ...unavailable]) expect(Number(r.retryAfter)).toBeGreaterThan(0);
    // Overload is refused straight away; the others waited for the publish timeout. (A slow
    // machine can only delay the 429s; they must still come before any 503 could.)
    for (const r of unavailable) expect(r.ms).toBeGreaterThanOrEqual(PUBLISH_TIMEOUT_MS - 100);
    expect(Math.max(...tooMany.map((r) => r.ms))).toBeLessThan(Math.min(...unavailable.map((r) => r.ms)));
    nats.resume();
    resumed = true;
    await until(async () => (await post("small-key-0001", events(1), small)).status === 200);
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
  // Every thread answering HTTP reconnects on its own: recovered once five requests in a row pass.
  const fiveOk = async () => {
    for (let i = 0; i < 5; i++) if ((await post("new-key-0002", events(1))).status !== 200) return false;
    return true;
  };
  expect(await until(fiveOk)).toBe(true);
});
