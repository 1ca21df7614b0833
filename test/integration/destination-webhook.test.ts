import { afterAll, describe, expect, test } from "bun:test";
import { useStack, type Stack } from "../harness/stack.ts";
import { pipelinesDir } from "../harness/services.ts";
import { WebhookReceiver, type Answer } from "../harness/webhook-receiver.ts";
import {
  counter,
  idsByUser,
  jsonLines,
  letterIds,
  pipelineSnapshot,
  runScript,
  streamEvents,
  waitFor,
} from "../harness/destinations.ts";

/**
 * Export pipelines to a webhook (PRODUCT.md §7), through the public path only: YAML in a pipelines
 * directory, events POSTed to the node, and what a real HTTP receiver got. The receiver verifies
 * signatures, counts Idempotency-Keys and answers failures on a schedule; the `dlq` and `check`
 * commands run as a user runs them.
 */

const ADMIN = "dest-webhook-admin";
const SECRET = "whsec-dest-test-0123456789abcdef";
const API_KEY = "crm-api-key-dest-test";
process.env.DEST_HOOK_SECRET = SECRET;
process.env.DEST_HOOK_API_KEY = API_KEY;

/** A receiver verifying this file's signing secret. */
const receiver = (o: { schedule?: Answer[]; format?: "json-array" | "ndjson" | "single" } = {}) =>
  WebhookReceiver.start({ secret: SECRET, signatureHeader: "X-Tributary-Signature", ...o });

// Order under failures: 6 users in parallel, a 500 or 503 every few requests.
const ordered = await receiver({ format: "json-array" });
ordered.decide = (r) =>
  r.n % 5 === 1 ? { status: 500, body: "boom" } : r.n % 7 === 3 ? { status: 503, body: "later" } : undefined;
// Retries of one batch: each failure the contract retries, then 200.
const retrying = await receiver({
  format: "ndjson",
  schedule: [
    { status: 500, body: "internal" },
    { status: 429, headers: { "Retry-After": "1" }, body: "slow down" },
    // Past timeoutMs (1000): the sender gives up and retries, though this one is taken (an idempotent receiver drops the retry).
    { status: 200, delayMs: 8000, body: "ok, late" },
    { status: 408, body: "request timeout" },
    { status: 503, body: "unavailable" },
  ],
});
// A 400 for some events: dead letters, then redriven once the receiver takes them.
const refusing = await receiver({ format: "single" });
const REFUSAL = `refused: poison event ${"x".repeat(2000)} END-OF-ANSWER`;
let refuse = true;
refusing.decide = (r) =>
  refuse && r.events.some((e) => e.properties?.poison) ? { status: 400, body: REFUSAL } : undefined;

const hook = (name: string, key: string, url: string, destination: string) =>
  `connection: ${name}
source: webhook
writeKeys: ["${key}"]
pipelines:
  - name: to-hook
    export: events
    destination:
      type: webhook
      url: ${url}/hooks/events
      headers: {X-Api-Key: "\${DEST_HOOK_API_KEY}"}
      signing: {secret: "\${DEST_HOOK_SECRET}", header: X-Tributary-Signature}
${destination
  .split("\n")
  .map((l) => `      ${l}`)
  .join("\n")}
`;

const stack: Stack = useStack(
  {
    "ordered.yaml": hook(
      "ordered",
      "key-dest-ordered-01",
      ordered.url,
      "format: json-array\nbatch: {maxEvents: 7, maxAgeMs: 50}\nmaxInFlight: 4\ntimeoutMs: 5000",
    ),
    "retrying.yaml": hook(
      "retrying",
      "key-dest-retrying-1",
      retrying.url,
      "format: ndjson\nbatch: {maxEvents: 100, maxAgeMs: 200}\ntimeoutMs: 1000",
    ),
    "refusing.yaml": hook(
      "refusing",
      "key-dest-refusing-1",
      refusing.url,
      "format: single\nbatch: {maxEvents: 1}\ntimeoutMs: 5000\nmaxInFlight: 2",
    ),
  },
  { adminToken: ADMIN },
);
afterAll(async () => {
  await Promise.all([ordered.stop(), retrying.stop(), refusing.stop()]);
});

const post = async (key: string, events: Record<string, unknown>[]) => {
  const r = await fetch(`${stack.node.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify(events),
  });
  expect(await r.json()).toEqual({ accepted: events.length });
};
const track = (userId: string, messageId: string, properties: Record<string, unknown> = {}) => ({
  type: "track",
  event: "Order Placed",
  userId,
  messageId,
  properties,
});

/** Every failed request of a key is followed by one with the same key and the same events, and a key ends accepted. */
function expectRetriedWithSameKey(r: WebhookReceiver): void {
  for (const q of r.requests) {
    expect(q.idempotencyKey).toBeTruthy();
    const same = r.withKey(q.idempotencyKey!);
    expect(same.map((x) => x.events.map((e) => e.messageId))).toEqual(same.map(() => q.events.map((e) => e.messageId)));
    expect(same.some((x) => x.answer.status >= 200 && x.answer.status < 300)).toBe(true);
  }
}

test("events of several users reach the receiver in each user's order, signed, with retries under the same key", async () => {
  const users = Array.from({ length: 6 }, (_, u) => `user-${u}`);
  const posted = new Map(users.map((u) => [u, [] as string[]]));
  // One user per request sequence: a user's next request is posted once the previous one was accepted.
  await Promise.all(
    users.map(async (u) => {
      for (let req = 0; req < 6; req++) {
        const ids = Array.from({ length: 5 }, (_, i) => `${u}-${req * 5 + i}`);
        await post(
          "key-dest-ordered-01",
          ids.map((id, i) => track(u, id, { n: req * 5 + i })),
        );
        posted.get(u)!.push(...ids);
      }
    }),
  );
  await ordered.until(
    () => [...ordered.byUser().values()].reduce((a, l) => a + l.length, 0) >= 180,
    "180 events stored by the receiver",
    60_000,
  );
  await Bun.sleep(300); // nothing more (no duplicate batch under a new key) comes
  // The contract's order is the stream's: the node's ingest stores one request's events on several
  // shard subjects at once, so within a request the stream may differ from the body; across a
  // user's requests (each posted after the last was accepted) it cannot.
  const streamOrder = idsByUser(await streamEvents(stack.nats.url, "ordered"));
  for (const [u, ids] of posted) {
    const chunks = (l: string[]) => Array.from({ length: 6 }, (_, k) => [...l.slice(k * 5, k * 5 + 5)].sort());
    expect(chunks(streamOrder.get(u)!)).toEqual(chunks(ids));
  }
  expect(Object.fromEntries(ordered.byUser())).toEqual(Object.fromEntries(streamOrder));
  // The receiver did answer failures, and each was retried with the same key and batch.
  expect(ordered.requests.some((r) => r.answer.status >= 500)).toBe(true);
  expectRetriedWithSameKey(ordered);
  for (const r of ordered.requests) {
    expect(r.signature).toBe("valid");
    expect(r.method).toBe("POST");
    expect(r.path).toBe("/hooks/events");
    expect(r.headers["x-api-key"]).toBe(API_KEY);
    expect(r.headers["content-type"]).toContain("json");
    expect(r.events.length).toBeLessThanOrEqual(7);
  }
  // Distinct batches carry distinct keys: each stored request's key is new.
  const stored = ordered.stored();
  expect(new Set(stored.map((r) => r.idempotencyKey)).size).toBe(stored.length);
  // Exported as the node stored them: the event's own fields travel.
  const first = ordered.stored()[0]!.events[0]!;
  expect(first).toMatchObject({ type: "track", event: "Order Placed" });
  expect(typeof first.receivedAt).toBe("string");
}, 90_000);

test("replay re-sends what the stream holds with the same messageIds, in each user's order, keyed by its messageIds", async () => {
  const before = ordered.requests.length;
  const live = new Map(ordered.requests.map((r) => [r.events.map((e) => e.messageId).join(","), r.idempotencyKey]));
  const r = await runScript("replay", ["ordered", "--pipeline", "to-hook"], {
    NATS_URL: stack.nats.url,
    CLICKHOUSE_URL: stack.ch.url,
    TRIBUTARY_PIPELINES: stack.node.config.options.dir,
  });
  expect({ code: r.code, err: r.code ? r.err : "" }).toEqual({ code: 0, err: "" });
  const replayed = ordered.requests.slice(before);
  const again = (id: string) => replayed.some((q) => q.answer.status < 300 && q.events.some((e) => e.messageId === id));
  const streamOrder = idsByUser(await streamEvents(stack.nats.url, "ordered"));
  expect([...streamOrder.values()].flat().filter((id) => !again(id))).toEqual([]);
  // Per user, the replay's first accepted copy of each event comes in stream order.
  const firstCopies = new Map<string, string[]>();
  const seen = new Set<string>();
  for (const q of replayed)
    if (q.answer.status < 300)
      for (const e of q.events)
        if (!seen.has(e.messageId)) {
          seen.add(e.messageId);
          firstCopies.set(e.userId, [...(firstCopies.get(e.userId) ?? []), e.messageId]);
        }
  expect(Object.fromEntries(firstCopies)).toEqual(Object.fromEntries(streamOrder));
  for (const q of replayed) {
    expect(q.signature).toBe("valid");
    // The key is the hash of the batch's messageIds: a batch grouped as a live one has its key.
    const ids = q.events.map((e) => e.messageId).join(",");
    if (live.has(ids)) expect(q.idempotencyKey).toBe(live.get(ids)!);
  }
  expectRetriedWithSameKey(ordered);
}, 90_000);

test("500, 429 with Retry-After, a timeout, 408 and 503 are retried with the same Idempotency-Key until 200", async () => {
  const ids = Array.from({ length: 5 }, (_, i) => `retry-${i}`);
  await post(
    "key-dest-retrying-1",
    ids.map((id) => track("solo", id)),
  );
  await retrying.until(
    () => ids.every((id) => retrying.acceptedIds().has(id)) && retrying.requests.length >= 6,
    "the batch accepted after five failures",
    60_000,
  );
  const [a, b, c, d, e, f] = retrying.requests;
  // One user: its batch is retried until accepted before anything after it is sent.
  const key = a!.idempotencyKey;
  expect(key).toBeTruthy();
  expect([a, b, c, d, e, f].map((r) => r!.idempotencyKey)).toEqual(Array(6).fill(key));
  expect([a, b, c, d, e, f].map((r) => r!.answer.status)).toEqual([500, 429, 200, 408, 503, 200]);
  expect(retrying.keys.get(key!)).toBe(6); // six attempts of one batch, counted by key
  for (const r of [b, c, d, e, f]) expect(r!.events.map((x) => x.messageId)).toEqual(a!.events.map((x) => x.messageId));
  // Retry-After: 1 is honoured (a lower bound only).
  expect(c!.at - b!.answeredAt!).toBeGreaterThanOrEqual(900);
  // The slow answer was given up on: the retry came before it was answered (or it still is not).
  expect(d!.at).toBeLessThan(c!.answeredAt ?? performance.now());
  // ndjson: one event per line, each signed body verified.
  expect(a!.body.trim().split("\n")).toHaveLength(a!.events.length);
  for (const r of retrying.requests) expect(r.signature).toBe("valid");
  // Every event arrived; an idempotent receiver stored each once.
  const stored = retrying.stored().flatMap((r) => r.events.map((x) => x.messageId));
  expect(stored.sort()).toEqual([...ids].sort());

  const snap = await waitFor(
    () => pipelineSnapshot(stack.node.url, ADMIN, "retrying", "to-hook"),
    (s) => (counter(s, "sent") ?? 0) > 0 && (counter(s, "retried") ?? 0) > 0,
    "sent and retried on /v1/pipelines",
  );
  expect(counter(snap, "retried")).toBeGreaterThanOrEqual(5);
  expect(counter(snap, "deadLettered")).toBe(0);
}, 90_000);

describe("a 400 dead-letters", () => {
  const dlq = (...args: string[]) =>
    runScript("dlq", ["refusing", "--pipeline", "to-hook", ...args], {
      NATS_URL: stack.nats.url,
      CLICKHOUSE_URL: stack.ch.url,
      TRIBUTARY_PIPELINES: stack.node.config.options.dir,
    });
  const good = ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4", "ok-5"];
  const poison = ["bad-0", "bad-1", "bad-2"];

  test("the refused events with the status and the start of the answer; the others are sent", async () => {
    await post("key-dest-refusing-1", [
      track("p1", "ok-0"),
      track("p1", "bad-0", { poison: true }),
      track("p1", "ok-1"),
      track("p2", "ok-2"),
      track("p2", "bad-1", { poison: true }),
      track("p3", "bad-2", { poison: true }),
      track("p3", "ok-3"),
    ]);
    await post("key-dest-refusing-1", [track("p1", "ok-4"), track("p2", "ok-5")]);
    await refusing.until(() => good.every((id) => refusing.acceptedIds().has(id)), "the good events", 60_000);
    const letters = await waitFor(
      async () => jsonLines((await dlq("--json")).out),
      (l) => l.flatMap(letterIds).length >= 3,
      "three dead letters",
      60_000,
    );
    expect(letters.flatMap(letterIds).sort()).toEqual(poison);
    for (const l of letters) {
      expect(l).toMatchObject({ connection: "refusing", pipeline: "to-hook" });
      const text = JSON.stringify(l);
      expect(l.status === 400 || /\b400\b/.test(String(l.reason))).toBe(true);
      expect(text).toContain("refused: poison event");
      expect(text).not.toContain("END-OF-ANSWER"); // only the first KiB of the answer
    }
    // format single, maxEvents 1: one event object per request.
    for (const r of refusing.requests) {
      expect(r.events).toHaveLength(1);
      expect(r.body.trim().startsWith("{")).toBe(true);
      expect(r.signature).toBe("valid");
    }
    // Refused, not lost: never accepted, and each tried once (a 400 is not retried).
    for (const id of poison) {
      expect(refusing.acceptedIds().has(id)).toBe(false);
      expect(refusing.requests.filter((r) => r.events[0]?.messageId === id)).toHaveLength(1);
    }
    // Per-user order (the stream's) holds for what was sent.
    const inStream = idsByUser((await streamEvents(stack.nats.url, "refusing")).filter((e) => !e.properties?.poison));
    expect(Object.fromEntries(refusing.byUser())).toEqual(Object.fromEntries(inStream));
    expect([...inStream.values()].flat().sort()).toEqual(good);
    const snap = await waitFor(
      () => pipelineSnapshot(stack.node.url, ADMIN, "refusing", "to-hook"),
      (s) => counter(s, "deadLettered") === 3,
      "deadLettered 3 on /v1/pipelines",
    );
    expect(counter(snap, "sent")).toBeGreaterThanOrEqual(good.length);
  }, 120_000);

  test("dlq --redrive sends them again: still refused they stay, accepted they are gone", async () => {
    const before = refusing.requests.length;
    const early = await dlq("--redrive");
    expect(early.code).not.toBe(0);
    expect(refusing.requests.length).toBeGreaterThan(before); // sent again
    expect(
      jsonLines((await dlq("--json")).out)
        .flatMap(letterIds)
        .sort(),
    ).toEqual(poison);

    refuse = false;
    const fixed = await dlq("--redrive");
    expect({ code: fixed.code, err: fixed.err }).toMatchObject({ code: 0 });
    for (const id of poison) expect(refusing.acceptedIds().get(id)).toBe(1);
    for (const id of good) expect(refusing.acceptedIds().get(id)).toBe(1);
    expect(jsonLines((await dlq("--json")).out)).toEqual([]);
    for (const r of refusing.requests) expect(r.signature).toBe("valid");
  }, 120_000);
});

describe("check", () => {
  const check = (files: Record<string, string>, env: Record<string, string | undefined> = {}) =>
    runScript("check", [pipelinesDir(files)], { DEST_HOOK_SECRET: SECRET, DEST_HOOK_API_KEY: API_KEY, ...env });
  const conn = (destination: string) =>
    `connection: shop\nsource: webhook\nwriteKeys: ["key-check-0001"]\npipelines:\n  - name: out\n    export: events\n    destination: ${destination}\n`;
  const signed = `{type: webhook, url: "http://127.0.0.1:9/x", signing: {secret: "\${DEST_HOOK_SECRET}", header: X-Sig}}`;

  test("accepts a webhook and a segment destination", async () => {
    const r = await check({
      "a.yaml": conn(signed),
      "b.yaml": conn(`{type: segment, url: "http://127.0.0.1:9", writeKey: "wk-0001"}`)
        .replace("shop", "shop2")
        .replace("key-check-0001", "key-check-0002"),
    });
    expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: expect.any(String) });
  });

  test("refuses a signing secret missing from the environment, naming it", async () => {
    const r = await check({ "a.yaml": conn(signed) }, { DEST_HOOK_SECRET: undefined });
    expect(r.code).toBe(1);
    expect(r.err).toContain("DEST_HOOK_SECRET");
    expect(r.err).toContain("a.yaml:");
  });

  test("refuses a destination without url", async () => {
    const r = await check({ "a.yaml": conn(`{type: webhook, format: json-array}`) });
    expect(r.code).toBe(1);
    expect(r.err).toContain("url");
  });

  test("refuses an unknown destination type", async () => {
    const r = await check({ "a.yaml": conn(`{type: carrier-pigeon, url: "http://127.0.0.1:9/x"}`) });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/type|carrier-pigeon/);
  });
});
