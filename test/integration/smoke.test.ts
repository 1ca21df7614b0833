import { afterAll, beforeAll, expect, test } from "bun:test";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import type { RunningNode } from "../../src/node.ts";

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(nats.url, { "web.yaml": webhookConnection("web", ["key-web-0001"]) });
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
});

test("an event posted with a write key is stored in JetStream", async () => {
  const r = await fetch(`${node.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: "Bearer key-web-0001" },
    body: JSON.stringify({ type: "track", event: "Signed Up", userId: "u1", messageId: "m-1" }),
  });
  expect(r.status).toBe(200);
  expect(await r.json()).toEqual({ accepted: 1 });
  const events = await storedEvents(node.bus, "web");
  expect(events.map((e) => e.messageId)).toEqual(["m-1"]);
});
