import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { gzipSync, deflateSync } from "node:zlib";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import type { RunningNode } from "../../src/node.ts";

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
const KEY = "key-http-0001";
const KEY2 = "key-http-0002"; // the same connection's second (rotated) key
const OTHER = "key-other-0001";

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(
    nats.url,
    {
      "http.yaml": webhookConnection("http", [KEY, KEY2]),
      "other.yaml": webhookConnection("other", [OTHER], 'allowedOrigins: ["https://app.example.com"]\n'),
    },
    { maxRequestBytes: 1024 * 1024, maxEventBytes: 4096, maxEventsPerRequest: 100 },
  );
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
});

let n = 0;
const uid = (p = "m") => `${p}-${Date.now()}-${n++}`;
const post = (path: string, body: BodyInit | null, headers: Record<string, string> = {}) =>
  fetch(`${node.url}${path}`, { method: "POST", headers: { Authorization: `Bearer ${KEY}`, ...headers }, body });
const json = (v: unknown) => JSON.stringify(v);
const track = (extra: Record<string, unknown> = {}) => ({
  type: "track",
  event: "Clicked",
  userId: "u1",
  messageId: uid(),
  ...extra,
});
const stored = async (connection = "http") =>
  new Map((await storedEvents(node.bus, connection)).map((e) => [e.messageId as string, e]));

describe("auth", () => {
  test("missing, malformed and unknown keys get the same 401", async () => {
    const bodies = await Promise.all(
      (
        [
          {},
          { Authorization: "Bearer" },
          { Authorization: "Token x" },
          { Authorization: "Bearer nope-nope-nope" },
          { Authorization: "Basic " + btoa("nope:") },
        ] as Record<string, string>[]
      ).map(async (h) => {
        const r = await fetch(`${node.url}/v1/events`, { method: "POST", headers: h, body: json(track()) });
        return [r.status, await r.text()];
      }),
    );
    for (const b of bodies) expect(b).toEqual(bodies[0]!);
    expect(bodies[0]![0]).toBe(401);
  });

  test("Bearer, Basic, a rotated second key and a body writeKey all authenticate", async () => {
    const a = track(),
      b = track(),
      c = track(),
      d = track();
    expect((await post("/v1/events", json(a))).status).toBe(200);
    expect((await post("/v1/events", json(b), { Authorization: "Basic " + btoa(`${KEY}:`) })).status).toBe(200);
    expect((await post("/v1/events", json(c), { Authorization: `Bearer ${KEY2}` })).status).toBe(200);
    const r = await fetch(`${node.url}/v1/track`, { method: "POST", body: json({ ...d, writeKey: KEY }) });
    expect(r.status).toBe(200);
    const s = await stored();
    for (const e of [a, b, c, d]) expect(s.has(e.messageId as string)).toBe(true);
    expect(s.get(d.messageId as string)!.writeKey).toBeUndefined();
  });

  test("the header wins over a body writeKey", async () => {
    const r = await fetch(`${node.url}/v1/track`, {
      method: "POST",
      headers: { Authorization: "Bearer wrong-key-123" },
      body: json({ ...track(), writeKey: KEY }),
    });
    expect(r.status).toBe(401);
  });

  test("a key routes to its own connection only", async () => {
    const e = track();
    expect((await post("/v1/events", json(e), { Authorization: `Bearer ${OTHER}` })).status).toBe(200);
    expect((await stored("other")).has(e.messageId as string)).toBe(true);
    expect((await stored("http")).has(e.messageId as string)).toBe(false);
  });
});

describe("bodies", () => {
  test("/v1/events takes an array or one object, under any content type", async () => {
    const a = [track(), track()],
      b = track(),
      c = track();
    const r1 = await post("/v1/events", json(a), { "Content-Type": "application/json" });
    expect(await r1.json()).toEqual({ accepted: 2 });
    expect((await post("/v1/events", json(b), { "Content-Type": "text/plain" })).status).toBe(200);
    expect((await post("/v1/events", json(c), { "Content-Type": "application/x-www-form-urlencoded" })).status).toBe(
      200,
    );
    const s = await stored();
    for (const e of [...a, b, c]) expect(s.has(e.messageId as string)).toBe(true);
  });

  test("gzip and deflate bodies, including gzip under x-www-form-urlencoded as RudderStack sends", async () => {
    const a = track(),
      b = track();
    const r1 = await post("/v1/batch", gzipSync(json({ batch: [a] })), {
      "Content-Encoding": "gzip",
      "Content-Type": "application/x-www-form-urlencoded",
    });
    expect(r1.status).toBe(200);
    const r2 = await post("/v1/events", deflateSync(json([b])), { "Content-Encoding": "deflate" });
    expect(r2.status).toBe(200);
    const s = await stored();
    expect(s.has(a.messageId as string) && s.has(b.messageId as string)).toBe(true);
  });

  test("a gzip bomb is stopped at the limit with 413", async () => {
    const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024, 32)); // 64 MiB of spaces in ~64 KiB
    expect(bomb.length).toBeLessThan(1024 * 1024);
    const before = process.memoryUsage().rss;
    const r = await post("/v1/events", bomb, { "Content-Encoding": "gzip" });
    expect(r.status).toBe(413);
    // The node shares this process: inflating the whole bomb would add ~64 MiB at least.
    expect(process.memoryUsage().rss - before).toBeLessThan(48 * 1024 * 1024);
  });

  test("oversize plain body → 413; malformed JSON → 400 naming the problem; corrupt gzip → 400", async () => {
    expect((await post("/v1/events", "[" + " ".repeat(1024 * 1024) + "]")).status).toBe(413);
    const bad = await post("/v1/events", "{not json");
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toMatch(/^invalid JSON: /);
    expect((await post("/v1/events", "garbage", { "Content-Encoding": "gzip" })).status).toBe(400);
    expect((await post("/v1/events", json(track()), { "Content-Encoding": "br" })).status).toBe(400);
  });

  test("shape errors → 400", async () => {
    for (const [path, body] of [
      ["/v1/events", "42"],
      ["/v1/batch", json([track()])],
      ["/v1/batch", json({ batch: {} })],
      ["/v1/track", json([track()])],
      ["/v1/events", "[]"],
    ] as const) {
      const r = await post(path, body);
      expect([path, r.status]).toEqual([path, 400]);
      expect(typeof (await r.json()).error).toBe("string");
    }
  });

  test("more events than allowed in one request → 413", async () => {
    const r = await post("/v1/events", json(Array.from({ length: 101 }, () => track())));
    expect(r.status).toBe(413);
  });
});

describe("validation and partial acceptance", () => {
  test("invalid events are rejected by index with the field named; the valid ones are kept", async () => {
    const good = [track(), track()];
    // Index 6 is under the limit in characters but over it in UTF-8 bytes.
    const body = [
      good[0],
      { type: "track", userId: "u", messageId: "bad-1" },
      { type: "identify" },
      { type: "group", userId: "u" },
      good[1],
      { ...track(), big: "x".repeat(5000) },
      { ...track(), big: "é".repeat(2500) },
    ];
    const r = await post("/v1/events", json(body));
    expect(r.status).toBe(200);
    const res = await r.json();
    expect(res.accepted).toBe(2);
    expect(res.rejected).toEqual([
      { index: 1, messageId: "bad-1", error: 'track event needs a non-empty "event"' },
      { index: 2, error: 'event needs a non-empty "userId" or "anonymousId"' },
      { index: 3, error: 'group event needs a non-empty "groupId"' },
      { index: 5, messageId: body[5]!.messageId, error: expect.stringMatching(/over the 4096-byte limit/) },
      { index: 6, messageId: body[6]!.messageId, error: expect.stringMatching(/over the 4096-byte limit/) },
    ]);
    const s = await stored();
    for (const e of good) expect(s.has(e.messageId as string)).toBe(true);
    expect(s.has("bad-1")).toBe(false);
  });

  test("no valid event → 400 with every rejection", async () => {
    const r = await post(
      "/v1/events",
      json([
        { type: "nope", userId: "u" },
        { type: "track", userId: "u" },
      ]),
    );
    expect(r.status).toBe(400);
    const res = await r.json();
    expect(res.rejected.map((x: { index: number }) => x.index)).toEqual([0, 1]);
  });

  test("/v1/<type> takes the type from the path", async () => {
    const id = uid();
    const r = await post("/v1/identify", json({ type: "track", userId: "u9", messageId: id, traits: { plan: "pro" } }));
    expect(r.status).toBe(200);
    expect((await stored()).get(id)!.type).toBe("identify");
  });

  test("/v1/batch merges top-level context and integrations under each event's own and applies sentAt", async () => {
    const a = track({ context: { locale: "fr" } }),
      b = track({ sentAt: "2025-01-01T00:00:01Z", timestamp: "2025-01-01T00:00:00Z" });
    const r = await post(
      "/v1/batch",
      json({
        batch: [a, b],
        context: { locale: "en", app: { name: "x" } },
        integrations: { All: true },
        sentAt: "2025-01-01T00:00:10Z",
      }),
    );
    expect(r.status).toBe(200);
    const s = await stored();
    const sa = s.get(a.messageId as string)!,
      sb = s.get(b.messageId as string)!;
    expect(sa.context.locale).toBe("fr");
    expect(sa.context.app).toEqual({ name: "x" });
    expect(sa.integrations).toEqual({ All: true });
    expect(sa.sentAt).toBe("2025-01-01T00:00:10.000Z");
    expect(sb.sentAt).toBe("2025-01-01T00:00:01.000Z");
    expect(Date.parse(sb.receivedAt) - Date.parse(sb.timestamp)).toBe(1000);
  });
});

describe("normalised fields and client address", () => {
  test("messageId generated, receivedAt set, context.ip from the socket; X-Forwarded-For ignored without TRUST_PROXY", async () => {
    const r = await post("/v1/identify", json({ userId: "ip-user", traits: { n: 1 } }), {
      "X-Forwarded-For": "203.0.113.9",
    });
    expect(r.status).toBe(200);
    const e = [...(await stored()).values()].find((x) => x.userId === "ip-user")!;
    expect(e.messageId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Math.abs(Date.parse(e.receivedAt) - Date.now())).toBeLessThan(10_000);
    expect(e.timestamp).toBe(e.receivedAt);
    expect(e.context.ip).toBe("127.0.0.1");
  });
});

describe("dedup by messageId", () => {
  test("retries, regrouped batches and concurrent duplicates are stored once", async () => {
    const events = Array.from({ length: 40 }, () => track());
    expect((await post("/v1/events", json(events.slice(0, 25)))).status).toBe(200);
    // The sender retries, regrouping: overlapping batches, concurrently, plus a single-event retry.
    const retries = await Promise.all([
      post("/v1/events", json(events.slice(10, 40))),
      post("/v1/events", json(events.slice(20, 30))),
      post("/v1/batch", gzipSync(json({ batch: events.slice(0, 40) })), { "Content-Encoding": "gzip" }),
      post("/v1/track", json(events[3])),
    ]);
    for (const r of retries) expect(r.status).toBe(200);
    const all = (await storedEvents(node.bus, "http")).filter((e) => events.some((x) => x.messageId === e.messageId));
    expect(all).toHaveLength(40);
  });

  test("the same messageId on two connections is two events", async () => {
    const e = track();
    expect((await post("/v1/events", json(e))).status).toBe(200);
    expect((await post("/v1/events", json(e), { Authorization: `Bearer ${OTHER}` })).status).toBe(200);
    expect((await stored("http")).has(e.messageId as string)).toBe(true);
    expect((await stored("other")).has(e.messageId as string)).toBe(true);
  });
});

describe("browsers", () => {
  test("OPTIONS preflight → 204 with CORS headers", async () => {
    const r = await fetch(`${node.url}/v1/batch`, {
      method: "OPTIONS",
      headers: {
        Origin: "https://site.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
      },
    });
    expect(r.status).toBe(204);
    expect(r.headers.get("access-control-allow-origin")).toBe("https://site.example");
    expect(r.headers.get("access-control-allow-methods")).toContain("POST");
    expect(r.headers.get("access-control-allow-headers")).toContain("authorization");
  });

  test("allowedOrigins restricts which origins may send; a refused page can read why (issue 17)", async () => {
    const ok = await post("/v1/events", json(track()), {
      Authorization: `Bearer ${OTHER}`,
      Origin: "https://app.example.com",
    });
    expect(ok.status).toBe(200);
    expect(ok.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    const no = await post("/v1/events", json(track()), {
      Authorization: `Bearer ${OTHER}`,
      Origin: "https://evil.example",
    });
    expect(no.status).toBe(403);
    expect(no.headers.get("access-control-allow-origin")).toBe("https://evil.example");
    expect((await no.json()).reason).toBe("origin_not_allowed");
  });
});
