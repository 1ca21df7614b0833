import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { useStack, type Stack } from "../harness/stack.ts";
import { WebhookReceiver } from "../harness/webhook-receiver.ts";
import { counter, idsByUser, pipelineSnapshot, streamEvents, waitFor } from "../harness/destinations.ts";
import { freePort } from "../../src/services/ports.ts";

/**
 * What a slow or dead destination may not do (PRODUCT.md §7 and issue 20): a slow user does not
 * hold back the others, and a destination that is down makes only its own pipeline wait (lag on
 * /v1/pipelines, retries, no dead letters) while another pipeline of the same connection sends on.
 * Also what an operator sees: /metrics and the Event debugger's per-event outcome.
 */

const ADMIN = "dest-isolation-admin";
const SLOW_MS = 5000;

// Answers for user "slowpoke" take SLOW_MS; everyone else's are immediate.
const slow = await WebhookReceiver.start({ format: "single" });
slow.decide = (r) => (r.events.some((e) => e.userId === "slowpoke") ? { status: 200, delayMs: SLOW_MS } : undefined);
const up = await WebhookReceiver.start({ format: "json-array" });
const kept = await WebhookReceiver.start({ format: "json-array" });
// Nothing listens here until the test starts a receiver on it.
const downPort = await freePort();

const exportTo = (name: string, url: string, destination: string) =>
  `  - name: ${name}\n    export: events\n    destination:\n      type: webhook\n      url: ${url}\n${destination
    .split("\n")
    .map((l) => `      ${l}`)
    .join("\n")}\n`;

const stack: Stack = useStack(
  {
    "slow.yaml": `connection: slowusers\nsource: webhook\nwriteKeys: ["key-dest-slow-0001"]\npipelines:\n${exportTo(
      "to-slow",
      `${slow.url}/in`,
      "format: single\nbatch: {maxEvents: 1}\nmaxInFlight: 4\ntimeoutMs: 20000",
    )}`,
    "pair.yaml": `connection: pair\nsource: webhook\nwriteKeys: ["key-dest-pair-0001"]\npipelines:\n${exportTo(
      "to-down",
      `http://127.0.0.1:${downPort}/in`,
      "format: json-array\nbatch: {maxEvents: 10, maxAgeMs: 50}\ntimeoutMs: 2000",
    )}${exportTo("to-up", `${up.url}/in`, "format: json-array\nbatch: {maxEvents: 10, maxAgeMs: 50}")}`,
    "tailed.yaml": `connection: tailed\nsource: webhook\nwriteKeys: ["key-dest-tail-0001"]\npipelines:\n${exportTo(
      "to-kept",
      `${kept.url}/in`,
      "batch: {maxEvents: 10, maxAgeMs: 50}",
    ).replace("    export: events\n", '    export: events\n    filter: event = "Keep"\n')}`,
  },
  { adminToken: ADMIN },
);
let down: WebhookReceiver | undefined;
afterAll(async () => {
  await Promise.all([slow.stop(), up.stop(), kept.stop(), down?.stop()]);
});

const post = async (key: string, events: Record<string, unknown>[]) => {
  const r = await fetch(`${stack.node.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify(events),
  });
  expect(await r.json()).toEqual({ accepted: events.length });
};
const admin = { headers: { Authorization: `Bearer ${ADMIN}` } };

test("a slow user does not hold back the others", async () => {
  // Two requests, one after the other: one request's events may be stored in any order (shards).
  for (const i of [0, 1])
    await post("key-dest-slow-0001", [{ type: "track", event: "E", userId: "slowpoke", messageId: `slow-${i}` }]);
  const fast = ["f0", "f1", "f2"].flatMap((u) =>
    [0, 1, 2, 3].map((i) => ({ type: "track", event: "E", userId: u, messageId: `${u}-${i}` })),
  );
  await post("key-dest-slow-0001", fast);
  // Every event answered (a slow 200 counts once its answer went out).
  const answered = () => new Set(slow.requests.filter((r) => r.answeredAt).map((r) => r.events[0]?.messageId));
  await slow.until(() => answered().size >= 14, "every event answered", 60_000);
  const answeredAt = (id: string) =>
    slow.requests.find((r) => r.answeredAt && r.events[0]?.messageId === id)!.answeredAt!;
  const firstSlow = answeredAt("slow-0");
  const t0 = slow.requests[0]!.at;
  const timeline = slow.requests.map((r) => [
    r.events[0]?.messageId,
    Math.round(r.at - t0),
    Math.round((r.answeredAt ?? NaN) - t0),
  ]);
  // Every other user's events were answered while the slow user's first request was still waiting.
  expect({
    late: fast.filter((e) => !(answeredAt(e.messageId) < firstSlow)).map((e) => e.messageId),
    timeline,
  }).toEqual({
    late: [],
    timeline,
  });
  // The slow user's own events stay in order: the second went only after the first was answered.
  const second = slow.requests.find((r) => r.events[0]?.messageId === "slow-1")!;
  expect(second.at).toBeGreaterThanOrEqual(firstSlow);
  expect(Object.fromEntries(slow.byUser())).toEqual(
    Object.fromEntries(idsByUser(await streamEvents(stack.nats.url, "slowusers"))),
  );
}, 90_000);

test("a destination that is down makes only its own pipeline wait; it gets everything once it is up", async () => {
  const events = Array.from({ length: 40 }, (_, i) => ({
    type: "track",
    event: "E",
    userId: `p${i % 4}`,
    messageId: `pair-${i}`,
  }));
  await post("key-dest-pair-0001", events);
  // The healthy pipeline sends on while the other one's destination refuses connections.
  await up.until(() => up.stored().flatMap((r) => r.events).length >= 40, "40 events at the healthy destination");
  const waiting = await waitFor(
    () => pipelineSnapshot(stack.node.url, ADMIN, "pair", "to-down"),
    (s) => (counter(s, "retried") ?? 0) > 0,
    "retries of the pipeline whose destination is down",
  );
  expect(counter(waiting, "sent")).toBe(0);
  expect(counter(waiting, "deadLettered")).toBe(0);
  // What it has not sent shows: unacknowledged in its consumer, or read and queued.
  expect((waiting!.lag ?? 0) + (counter(waiting, "queued") ?? 0) + (counter(waiting, "inFlight") ?? 0)).toBeGreaterThan(
    0,
  );
  const metrics = await (await fetch(`${stack.node.url}/metrics`, admin)).text();
  expect(metrics).toMatch(/tributary_export_events\{[^}]*pipeline="to-up"[^}]*outcome="sent"[^}]*\} 40/);
  expect(metrics).toMatch(/tributary_export_requests\{[^}]*pipeline="to-down"[^}]*result="retried"[^}]*\} [1-9]/);
  // The Event debugger says per event what the destination answered.
  const seen = (await (await fetch(`${stack.node.url}/v1/connections/pair/events/pair-7`, admin)).json()) as {
    outcomes: { pipeline: string; outcome: string; reason?: string }[];
  };
  expect(JSON.stringify(seen.outcomes.filter((o) => o.pipeline === "to-up"))).toMatch(/sent \(HTTP 200 in \d+ ms\)/);

  // The destination comes up where the pipeline points: everything arrives, in each user's order, once.
  down = await WebhookReceiver.start({ port: downPort, format: "json-array" });
  const d = down;
  await d.until(() => d.stored().flatMap((r) => r.events).length >= 40, "40 events once the destination is up", 60_000);
  expect(Object.fromEntries(d.byUser())).toEqual(
    Object.fromEntries(idsByUser(await streamEvents(stack.nats.url, "pair"))),
  );
  await waitFor(
    () => pipelineSnapshot(stack.node.url, ADMIN, "pair", "to-down"),
    (s) => counter(s, "sent") === 40 && (s?.lag ?? 0) === 0,
    "sent 40 and no lag",
  );
}, 120_000);

test("tail --pipeline of an export pipeline shows what its filter keeps, and that is what the destination gets", async () => {
  const p = Bun.spawn(
    [process.execPath, join(import.meta.dir, "../../scripts/tail.ts"), "tailed", "--pipeline", "to-kept", "--json"],
    {
      env: {
        ...process.env,
        NATS_URL: stack.nats.url,
        TRIBUTARY_PIPELINES: stack.node.config.options.dir,
        NO_COLOR: "1",
        LOG_LEVEL: "error",
      },
      stdout: "pipe",
      stderr: "pipe",
    },
  );
  const got = { out: "", err: "" };
  const pump = async (s: ReadableStream<Uint8Array>, key: "out" | "err") => {
    const d = new TextDecoder();
    for await (const chunk of s) got[key] += d.decode(chunk, { stream: true });
  };
  void pump(p.stdout, "out");
  void pump(p.stderr, "err");
  try {
    await waitFor(
      () => got.err,
      (e) => e.includes("tributary.events.tailed.* on"),
      "tail to subscribe",
    );
    await post(
      "key-dest-tail-0001",
      ["Keep", "Drop", "Keep"].map((event, i) => ({ type: "track", event, userId: "t1", messageId: `tail-${i}` })),
    );
    await kept.until(() => kept.stored().flatMap((r) => r.events).length >= 2, "the kept events at the destination");
    await waitFor(
      () => got.out,
      (o) => o.includes("tail-0") && o.includes("tail-2"),
      "tail to show the kept events",
    );
    await Bun.sleep(300);
    expect(got.out).not.toContain("tail-1");
    expect(
      kept
        .stored()
        .flatMap((r) => r.events.map((e) => e.messageId))
        .sort(),
    ).toEqual(["tail-0", "tail-2"]);
  } finally {
    p.kill();
    await p.exited;
  }
}, 60_000);
