import { afterAll, beforeAll, expect, test } from "bun:test";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import type { RunningNode } from "../../src/node.ts";

let nats: Awaited<ReturnType<typeof startNats>>;
let a: RunningNode;
let b: RunningNode;
const files = { "m.yaml": webhookConnection("multi", ["key-multi-0001"]) };

beforeAll(async () => {
  nats = await startNats();
  [a, b] = await Promise.all([startTestNode(nats.url, files), startTestNode(nats.url, files)]);
});
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.cleanup();
});

const post = (node: RunningNode, ids: string[]) =>
  fetch(`${node.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: "Bearer key-multi-0001" },
    body: JSON.stringify(ids.map((id) => ({ type: "track", event: "E", userId: "u", messageId: id }))),
  }).then((r) => r.status);

test("two nodes receiving the same messageIds at once store each event once", async () => {
  // Fresh subjects (no message yet) and then busy ones: both cases of the expected-sequence guard.
  for (let round = 0; round < 5; round++) {
    const ids = Array.from({ length: 200 }, (_, i) => `r${round}-${i}`);
    const halves = [ids.slice(0, 120), ids.slice(80)];
    const statuses = await Promise.all([post(a, ids), post(b, ids), post(a, halves[1]!), post(b, halves[0]!)]);
    expect(statuses).toEqual([200, 200, 200, 200]);
  }
  const stored = (await storedEvents(a.bus, "multi")).map((e) => e.messageId as string);
  expect(stored).toHaveLength(1000);
  expect(new Set(stored).size).toBe(1000);
});

test("a node started later learns the ids already stored (dedup survives restarts)", async () => {
  const late = await startTestNode(nats.url, files);
  try {
    expect(await post(late, ["r0-0", "r4-199", "fresh-1"])).toBe(200);
    const stored = (await storedEvents(a.bus, "multi")).map((e) => e.messageId as string);
    expect(stored).toHaveLength(1001);
  } finally {
    await late.stop();
  }
});
