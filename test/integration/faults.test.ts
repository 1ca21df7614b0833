import { afterAll, beforeAll, expect, test } from "bun:test";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import type { RunningNode } from "../../src/node.ts";

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
const KEY = "key-fault-0001";

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(nats.url, { "f.yaml": webhookConnection("faults", [KEY]) }, { publishTimeoutMs: 1000 });
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
});

type Sent = { ids: string[]; body: string; status: number; retryAfter: string | null };

async function send(batch: string[]): Promise<Sent> {
  const body = JSON.stringify(batch.map((id) => ({ type: "track", event: "Load", userId: "u", messageId: id })));
  try {
    const r = await fetch(`${node.url}/v1/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}` },
      body,
    });
    await r.arrayBuffer();
    return { ids: batch, body, status: r.status, retryAfter: r.headers.get("retry-after") };
  } catch {
    return { ids: batch, body, status: 0, retryAfter: null };
  }
}

test("NATS killed mid-load: no 2xx for an event JetStream lost; the node recovers by itself; retries land once", async () => {
  const results: Sent[] = [];
  let seq = 0;
  let running = true;
  const sender = async (w: number) => {
    while (running) {
      const batch = Array.from({ length: 20 }, () => `w${w}-${seq++}`);
      results.push(await send(batch));
    }
  };
  const senders = Array.from({ length: 8 }, (_, w) => sender(w));
  await Bun.sleep(600);
  await nats.kill(); // SIGKILL: no chance to flush or say goodbye
  const killedAt = results.length;
  await Bun.sleep(2000);
  await nats.start(); // same port, same store
  const restartedAt = Date.now();
  // The node must recover without help: wait until requests succeed again.
  while (Date.now() - restartedAt < 20_000) {
    const last = results.slice(-8);
    if (last.length === 8 && last.every((r) => r.status === 200)) break;
    await Bun.sleep(100);
  }
  running = false;
  await Promise.all(senders);

  const during = results.slice(killedAt);
  const refused = results.filter((r) => r.status !== 200);
  expect(refused.length).toBeGreaterThan(0);
  for (const r of refused) {
    expect(r.status).toBe(503);
    expect(Number(r.retryAfter)).toBeGreaterThan(0);
  }
  expect(during.some((r) => r.status === 200)).toBe(true);
  expect(results.slice(-8).every((r) => r.status === 200)).toBe(true);

  const ok = new Set(results.filter((r) => r.status === 200).flatMap((r) => r.ids));
  let stored = await storedEvents(node.bus, "faults");
  let ids = stored.map((e) => e.messageId as string);
  for (const id of ok) expect(ids.includes(id)).toBe(true);
  expect(new Set(ids).size).toBe(ids.length);

  // The sender retries what was refused (some of it may have landed before the kill): once each.
  for (const r of refused) expect((await send(r.ids)).status).toBe(200);
  stored = await storedEvents(node.bus, "faults");
  ids = stored.map((e) => e.messageId as string);
  expect(new Set(ids).size).toBe(ids.length);
  const all = new Set(results.flatMap((r) => r.ids));
  expect(ids.length).toBe(all.size);
}, 60_000);
