import { expect, test } from "bun:test";
import { useStack } from "../harness/stack.ts";
import { WebhookReceiver } from "../harness/webhook-receiver.ts";
import { jsonLines, letterIds, runScript, waitFor } from "../harness/destinations.ts";

/**
 * A forgotten user's dead letters hold their data: `npm run dlq -- --redrive` deletes them instead
 * of sending them on (issue 21: nothing brings a forgotten user back). Through the public path: an
 * export pipeline's destination refuses the user's events (400, dead letters), the admin forgets
 * the user (DELETE /v1/users/<id>), the destination is fixed, and a redrive sends only the others.
 */
const ADMIN = "forget-dlq-admin";
const KEY = "key-forget-dlq-0001";
const receiver = await WebhookReceiver.start({ format: "single" });
let refuse = true;
receiver.decide = () => (refuse ? { status: 400, body: "refused" } : undefined);

const stack = useStack(
  {
    "customer-model.yaml": "customerModel:\n  email: string\n",
    "shop.yaml": `connection: shop
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: people
    import: users
    transform:
      mapping:
        email: traits.email
  - name: to-hook
    export: events
    destination:
      type: webhook
      url: ${receiver.url}/hooks
      format: single
      batch: {maxEvents: 1}
`,
  },
  { adminToken: ADMIN },
);

const dlq = (...args: string[]) =>
  runScript("dlq", ["shop", "--pipeline", "to-hook", ...args], {
    NATS_URL: stack.nats.url,
    CLICKHOUSE_URL: stack.ch.url,
    TRIBUTARY_PIPELINES: stack.node.config.options.dir,
  });

test("dlq --redrive deletes a forgotten user's dead letters and sends the others", async () => {
  const events = [
    { type: "identify", userId: "gone", messageId: "gone-1", traits: { email: "gone@example.com" } },
    { type: "track", userId: "gone", event: "Viewed", messageId: "gone-2" },
    { type: "track", userId: "kept", event: "Viewed", messageId: "kept-1" },
  ];
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ batch: events }),
  });
  expect(r.status).toBe(200);
  // Every event refused once: three dead letters.
  const letters = await waitFor(
    async () => jsonLines((await dlq("--json")).out),
    (l) => l.length === 3,
    "three dead letters",
    60_000,
  );
  expect(letters.flatMap(letterIds).sort()).toEqual(["gone-1", "gone-2", "kept-1"]);
  // The profile exists before it is forgotten.
  const forget = () =>
    fetch(`${stack.node.url}/v1/users/gone`, { method: "DELETE", headers: { Authorization: `Bearer ${ADMIN}` } });
  await waitFor(
    async () => (await forget()).status,
    (s) => s === 200,
    "the user forgotten",
    60_000,
  );

  refuse = false;
  const before = receiver.requests.length;
  const redrive = await dlq("--redrive");
  expect(redrive.code).toBe(0);
  expect(redrive.out).toContain("forgotten user");
  const sent = receiver.requests.slice(before).flatMap((q) => q.events.map((e) => e.messageId));
  expect(sent).toEqual(["kept-1"]);
  expect(jsonLines((await dlq("--json")).out)).toEqual([]);
}, 180_000);
