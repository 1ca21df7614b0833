import { afterEach, describe, expect, test } from "bun:test";
import { createHash, createHmac } from "node:crypto";
import { resolveDestination, type Destination } from "../../src/config/destination.ts";
import type { ExportRow } from "../../src/sink/http/export-sink.ts";
import { retryAfterMs } from "../../src/sink/http/retry.ts";
import { exportSink } from "../../src/pipeline/export/sink.ts";

// A real HTTP receiver (Bun.serve) answering on a schedule; the sink under test is the real one.

interface Received {
  at: number;
  method: string;
  headers: Headers;
  body: string;
}

type Handler = (r: Received, n: number) => Response | Promise<Response>;

const servers: { stop(force?: boolean): void }[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.stop(true);
});

function receiver(handler: Handler = () => new Response("ok")) {
  const got: Received[] = [];
  const server = Bun.serve({
    port: 0,
    async fetch(req) {
      const r = { at: performance.now(), method: req.method, headers: req.headers, body: await req.text() };
      got.push(r);
      return handler(r, got.length);
    },
  });
  servers.push(server);
  return { url: `http://127.0.0.1:${server.port}/hook`, got };
}

const dest = (over: Partial<Destination> & { url: string }) =>
  resolveDestination({ type: "webhook", retry: { initialBackoffMs: 10, maxBackoffMs: 50 }, ...over } as Destination);

const row = (user: string, i: number, extra: Record<string, unknown> = {}): ExportRow => ({
  messageId: `${user}-${i}`,
  key: `u:${user}`,
  body: { messageId: `${user}-${i}`, userId: user, i, ...extra },
});

// Written from the contract, not from the implementation: SHA-256 over length-prefixed ids.
const expectedKey = (ids: string[]) => {
  const h = createHash("sha256");
  for (const id of ids) h.update(`${id.length}:${id}`);
  return h.digest("hex");
};

describe("webhook destination", () => {
  test("json-array batches within maxEvents, signed, with the Idempotency-Key of their messageIds", async () => {
    const r = receiver();
    const sink = exportSink(
      dest({
        url: r.url,
        batch: { maxEvents: 3, maxAgeMs: 20 },
        signing: { secret: "s3cret" },
        headers: { "X-Api-Key": "k1" },
      }),
    );
    const rows = [0, 1, 2, 3, 4].map((i) => row(`user${i}`, 0));
    const outcome = await sink.write(rows);
    expect(outcome).toEqual({ written: 5, refused: [] });
    const sent = r.got.flatMap((g) => JSON.parse(g.body) as { messageId: string }[]);
    expect(sent.map((e) => e.messageId).sort()).toEqual(rows.map((x) => x.messageId).sort());
    for (const g of r.got) {
      const events = JSON.parse(g.body) as { messageId: string }[];
      expect(events.length).toBeLessThanOrEqual(3);
      expect(g.headers.get("content-type")).toBe("application/json");
      expect(g.headers.get("x-api-key")).toBe("k1");
      expect(g.headers.get("idempotency-key")).toBe(expectedKey(events.map((e) => e.messageId)));
      const ts = g.headers.get("x-tributary-timestamp")!;
      expect(Math.abs(Number(ts) - Date.now() / 1000)).toBeLessThan(60);
      const mac = createHmac("sha256", "s3cret").update(`${ts}.${g.body}`).digest("hex");
      expect(g.headers.get("x-tributary-signature")).toBe(mac);
    }
    sink.stop();
  });

  test("ndjson and single bodies", async () => {
    const r = receiver();
    const nd = exportSink(dest({ url: r.url, format: "ndjson", batch: { maxAgeMs: 0 } }));
    await nd.write([row("a", 1), row("a", 2)]);
    expect(r.got[0]!.headers.get("content-type")).toBe("application/x-ndjson");
    expect(r.got.flatMap((g) => g.body.trimEnd().split("\n")).map((l) => JSON.parse(l).i)).toEqual([1, 2]);
    r.got.length = 0;
    const single = exportSink(dest({ url: r.url, format: "single" }));
    await single.write([row("a", 1), row("a", 2)]);
    expect(r.got.map((g) => JSON.parse(g.body).i)).toEqual([1, 2]);
  });

  test("each user's events arrive in order; a slow user does not hold the others", async () => {
    let slowRelease!: () => void;
    const slowGate = new Promise<void>((resolve) => (slowRelease = resolve));
    const r = receiver(async (g) => {
      const events = JSON.parse(g.body) as { userId: string }[];
      if (events.some((e) => e.userId === "slow")) await slowGate;
      else await Bun.sleep(Math.random() * 15);
      return new Response("ok");
    });
    const sink = exportSink(dest({ url: r.url, batch: { maxEvents: 4, maxAgeMs: 5 }, maxInFlight: 4 }));
    const users = ["slow", "a", "b", "c", "d", "e"];
    // The slow user's first request goes out alone; the users it shares a request with would wait
    // for that request (a request is atomic), the others must not.
    const writes: Promise<unknown>[] = [sink.write([row("slow", 0)])];
    while (sink.stats.inFlight === 0) await Bun.sleep(5);
    // Several messages, each mixing users, as stream messages do.
    for (let m = 0; m < 20; m++)
      writes.push(sink.write(users.filter((u) => u !== "slow" || m > 0).map((u) => row(u, m))));
    // Everyone but the slow user finishes while the slow user's first request is still held.
    const deadline = Date.now() + 20_000;
    const othersDone = () =>
      r.got.flatMap((g) => JSON.parse(g.body) as { userId: string }[]).filter((e) => e.userId !== "slow").length;
    while (othersDone() < 100 && Date.now() < deadline) await Bun.sleep(20);
    expect(othersDone()).toBe(100);
    slowRelease();
    await Promise.all(writes);
    const perUser = new Map<string, number[]>();
    for (const g of r.got.sort((x, y) => x.at - y.at))
      for (const e of JSON.parse(g.body) as { userId: string; i: number }[])
        perUser.set(e.userId, [...(perUser.get(e.userId) ?? []), e.i]);
    for (const u of users) expect(perUser.get(u)).toEqual([...Array(20).keys()]);
  });

  test("408, 429 with Retry-After, 5xx, timeouts and refused connections are retried with the same key", async () => {
    const schedule = [500, 429, 408, "slow", 503, 200];
    const r = receiver(async (_g, n) => {
      const what = schedule[n - 1] ?? 200;
      if (what === "slow") {
        await Bun.sleep(1500);
        return new Response("late");
      }
      return new Response("x", { status: what as number, headers: what === 429 ? { "Retry-After": "1" } : {} });
    });
    const sink = exportSink(dest({ url: r.url, timeoutMs: 300, batch: { maxAgeMs: 0 } }));
    const outcome = await sink.write([row("a", 1), row("b", 1)]);
    expect(outcome.written).toBe(2);
    const keys = new Set(r.got.map((g) => g.headers.get("idempotency-key")));
    expect(keys.size).toBe(1);
    expect(r.got.length).toBe(6);
    // The attempt after the 429 waited for its Retry-After (1 s), not the 10-50 ms backoff.
    expect(r.got[2]!.at - r.got[1]!.at).toBeGreaterThanOrEqual(900);
    const s = sink.stats.snapshot();
    expect(s.retried).toBe(5);
    expect(s.failed).toBe(5);
    expect(s.sent).toBe(2);
    expect(s.latencyByStatus["429"]!.count).toBe(1);
    expect(s.latencyByStatus.timeout!.count).toBe(1);

    // A port nobody listens on: retried, until a receiver is there.
    const probe = Bun.serve({ port: 0, fetch: () => new Response("") });
    const port = probe.port;
    probe.stop(true);
    const down = exportSink(dest({ url: `http://127.0.0.1:${port}/hook`, batch: { maxAgeMs: 0 } }));
    const pending = down.write([row("z", 1)]);
    await Bun.sleep(300);
    expect(down.stats.failed).toBeGreaterThan(0);
    expect(down.stats.snapshot().latencyByStatus.error).toBeDefined();
    const back = Bun.serve({ port, fetch: () => new Response("ok") });
    servers.push(back);
    expect((await pending).written).toBe(1);
  });

  test("another 4xx refuses the whole batch with the status and the first KiB of the answer", async () => {
    const long = "e".repeat(5000);
    const r = receiver(() => new Response(long, { status: 422 }));
    const outcomes: string[] = [];
    const sink = exportSink(dest({ url: r.url, batch: { maxAgeMs: 0 } }), {
      onOutcome: (id, o, reason) => outcomes.push(`${id} ${o} ${reason}`),
    });
    const outcome = await sink.write([row("a", 1), row("a", 2)]);
    expect(outcome.written).toBe(0);
    expect(outcome.refused.map((x) => x.row.messageId)).toEqual(["a-1", "a-2"]);
    expect(outcome.refused[0]!.reason).toBe(`HTTP 422: ${"e".repeat(1024)}`);
    expect(r.got.length).toBe(1);
    expect(sink.stats.deadLettered).toBe(2);
    expect(outcomes[0]).toStartWith("a-1 failed refused: HTTP 422");
  });

  test("a 2xx is reported per event with status and time", async () => {
    const r = receiver(() => new Response(null, { status: 204 }));
    const outcomes: string[] = [];
    const sink = exportSink(dest({ url: r.url, batch: { maxAgeMs: 0 } }), {
      onOutcome: (id, o, reason) => outcomes.push(`${id} ${o} ${reason}`),
    });
    await sink.write([row("a", 1)]);
    expect(outcomes[0]).toMatch(/^a-1 loaded sent \(HTTP 204 in \d+ ms\)$/);
  });

  test("a redirect is not followed", async () => {
    const other = receiver();
    const r = receiver(() => new Response(null, { status: 302, headers: { Location: other.url } }));
    const sink = exportSink(dest({ url: r.url, batch: { maxAgeMs: 0 } }));
    const outcome = await sink.write([row("a", 1)]);
    expect(outcome.refused[0]!.reason).toStartWith("HTTP 302");
    expect(other.got.length).toBe(0);
  });

  test("stop() fails what is pending, for redelivery", async () => {
    const r = receiver(() => new Response("down", { status: 503 }));
    const sink = exportSink(dest({ url: r.url, batch: { maxAgeMs: 0 } }));
    const pending = sink.write([row("a", 1)]);
    await Bun.sleep(100);
    sink.stop();
    await expect(pending).rejects.toMatchObject({ code: "SINK_STOPPED" });
  });

  test("rate limit: requests per second", async () => {
    const r = receiver();
    const sink = exportSink(
      dest({ url: r.url, format: "single", rateLimit: { requestsPerSecond: 5 }, maxInFlight: 8 }),
    );
    await sink.write([...Array(10).keys()].map((i) => row(`u${i}`, i)));
    // 5 at once (a second's worth), then 5 more spread over the next second.
    expect(r.got.at(-1)!.at - r.got[0]!.at).toBeGreaterThanOrEqual(700);
  });

  test("room() waits while maxQueuedEvents are queued", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const r = receiver(async () => {
      await gate;
      return new Response("ok");
    });
    const sink = exportSink(dest({ url: r.url, maxQueuedEvents: 3, batch: { maxAgeMs: 0 } }));
    const w = sink.write([row("a", 1), row("b", 1), row("c", 1)]);
    let roomy = false;
    const room = sink.room().then(() => (roomy = true));
    await Bun.sleep(100);
    expect(roomy).toBe(false);
    release();
    await w;
    await room;
    expect(roomy).toBe(true);
  });
});

describe("segment destination", () => {
  test("POST {url}/v1/batch with {batch} and Basic auth of the write key", async () => {
    const r = receiver();
    const d = resolveDestination({ type: "segment", url: r.url.replace("/hook", ""), writeKey: "wk_123" });
    expect(d.maxBytes).toBe(500_000);
    const sink = exportSink({ ...d, maxAgeMs: 0 });
    await sink.write([row("a", 1)]);
    const g = r.got[0]!;
    expect(new URL(`http://x${new URL(r.url).pathname}`).pathname).toBe("/hook");
    expect(g.headers.get("authorization")).toBe(`Basic ${btoa("wk_123:")}`);
    expect(JSON.parse(g.body).batch).toEqual([row("a", 1).body]);
  });
});

describe("Retry-After", () => {
  test("seconds, an HTTP date, capped; unreadable is undefined", () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    expect(retryAfterMs("3", 60_000, now)).toBe(3000);
    expect(retryAfterMs("Thu, 01 Jan 2026 00:00:10 GMT", 60_000, now)).toBe(10_000);
    expect(retryAfterMs("3600", 60_000, now)).toBe(60_000);
    expect(retryAfterMs("soon", 60_000, now)).toBeUndefined();
    expect(retryAfterMs(null, 60_000, now)).toBeUndefined();
  });
});
