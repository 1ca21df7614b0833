import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Value } from "@sinclair/typebox/value";
import { Elysia } from "elysia";
import { ingestRoutes } from "../../src/ingest/server.ts";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import type { RunningNode } from "../../src/node.ts";
import { RudderSourceConfig, SegmentSettings } from "../../src/ingest/sdk-config.ts";

/**
 * Issue 17, the routes the browser SDKs need, over HTTP against real nodes (NATS only: a 200 means
 * JetStream has the events; test/browser/sdks.test.ts follows them into ClickHouse): the settings
 * and source-config endpoints, Segment's short routes, RudderStack's beacon route, 403s a page can
 * read, and the warn lines refusals leave (never with the key).
 */

const SHOP = "key-browser-routes-shop-0001"; // allowedOrigins: https://shop.example
const OPEN = "key-browser-routes-open-0001"; // no allowedOrigins
const SHOP_ORIGIN = "https://shop.example";
const EVIL = "https://evil.example";
const HOOK_SECRET = "hook-secret-browser-routes-01";

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
let proxied: RunningNode;
const logs: Record<string, unknown>[] = [];
const rawLog: string[] = [];
const write = process.stderr.write.bind(process.stderr);

beforeAll(async () => {
  // The node's log lines, read as they are written (the logger itself runs unchanged).
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const text = typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
    rawLog.push(text);
    for (const line of text.split("\n")) if (line.startsWith("{")) logs.push(JSON.parse(line));
    return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  nats = await startNats();
  const files = {
    "shop.yaml": webhookConnection("shop", [SHOP], `allowedOrigins: ["${SHOP_ORIGIN}"]\n`),
    "open.yaml": webhookConnection("open", [OPEN]),
    "hook.yaml": `connection: hook\nsource: raw\nbody: json\ncheck: {header: X-Hook-Token, equals: "${HOOK_SECRET}"}\n`,
  };
  // One thread answering HTTP: these tests read the log lines this thread writes to stderr.
  node = await startTestNode(nats.url, files, { ingestWorkers: 1 });
  proxied = await startTestNode(
    nats.url,
    { "open.yaml": webhookConnection("open", [OPEN]) },
    { trustProxy: true, ingestWorkers: 1 },
  );
}, 60_000);

afterAll(async () => {
  process.stderr.write = write;
  await Promise.all([node?.stop(), proxied?.stop()]);
  await nats?.cleanup();
});

const basic = (key: string) => `Basic ${btoa(`${key}:`)}`;
const warnings = (msg: string) => logs.filter((l) => l.level === "warn" && l.msg === msg);
const event = (type: string, extra: Record<string, unknown> = {}) => ({
  type,
  userId: "u-1",
  messageId: crypto.randomUUID(),
  ...extra,
});

describe("Segment analytics.js settings: GET /v1/projects/<writeKey>/settings", () => {
  test("point Segment.io at this node, as the browser reached it, with CORS for the page", async () => {
    const r = await fetch(`${node.url}/v1/projects/${OPEN}/settings`, { headers: { Origin: "https://any.example" } });
    expect(r.status).toBe(200);
    expect(r.headers.get("access-control-allow-origin")).toBe("https://any.example");
    const body = (await r.json()) as SegmentSettings;
    expect([...Value.Errors(SegmentSettings, body)]).toEqual([]);
    expect(body.integrations["Segment.io"]).toMatchObject({
      apiKey: OPEN,
      apiHost: `127.0.0.1:${node.port}/v1`,
      protocol: "http",
    });
    // Only what the key implies: no connection name, no other key.
    const text = JSON.stringify(body);
    for (const secret of ["open", "shop", SHOP, "hook", HOOK_SECRET])
      expect(text.replace(OPEN, "")).not.toContain(`"${secret}"`);
    expect(text).not.toContain(SHOP);
  });

  test("the Host header names the node; forwarded headers count only on a node that trusts its proxy", async () => {
    const headers = { Host: "events.example.com", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "cdn.example.org" };
    const direct = (await (
      await fetch(`${node.url}/v1/projects/${OPEN}/settings`, { headers })
    ).json()) as SegmentSettings;
    expect(direct.integrations["Segment.io"]).toMatchObject({ apiHost: "events.example.com/v1", protocol: "http" });
    const behind = (await (
      await fetch(`${proxied.url}/v1/projects/${OPEN}/settings`, { headers })
    ).json()) as SegmentSettings;
    expect(behind.integrations["Segment.io"]).toMatchObject({ apiHost: "cdn.example.org/v1", protocol: "https" });
    const bad = await fetch(`${proxied.url}/v1/projects/${OPEN}/settings`, {
      headers: { "X-Forwarded-Host": "a b/<script>" },
    });
    expect(bad.status).toBe(400);
    // A compose service name, an IPv6 literal.
    for (const host of ["tributary_node:2022", "[::1]:2022"]) {
      const r = (await (
        await fetch(`${node.url}/v1/projects/${OPEN}/settings`, { headers: { Host: host } })
      ).json()) as SegmentSettings;
      expect(r.integrations["Segment.io"].apiHost).toBe(`${host}/v1`);
    }
  });

  test("an unknown key is a JSON 404 the page can read", async () => {
    const r = await fetch(`${node.url}/v1/projects/not-a-key-0000/settings`, { headers: { Origin: SHOP_ORIGIN } });
    expect(r.status).toBe(404);
    expect(r.headers.get("access-control-allow-origin")).toBe(SHOP_ORIGIN);
    expect((await r.json()).error).toContain("write key");
  });
});

describe("RudderStack source config: GET /sourceConfig/", () => {
  const url = (q: string) => `${node.url}/sourceConfig/?p=npm&v=3.34.1&build=modern&${q}`;

  test("enabled, no destinations, stats off; by Basic auth or by the query's key", async () => {
    const inits: RequestInit[] = [
      { headers: { Authorization: basic(OPEN), Origin: "https://any.example" } },
      { headers: { Origin: "https://any.example" } },
    ];
    for (const init of inits) {
      const r = await fetch(url(`writeKey=${OPEN}`), init);
      expect(r.status).toBe(200);
      expect(r.headers.get("access-control-allow-origin")).toBe("https://any.example");
      const body = (await r.json()) as RudderSourceConfig;
      expect([...Value.Errors(RudderSourceConfig, body)]).toEqual([]);
      expect(body.source).toMatchObject({ writeKey: OPEN, enabled: true, destinations: [] });
      expect(JSON.stringify(body)).not.toContain('"open"');
    }
    expect((await fetch(url("writeKey=nope-nope-0001"))).status).toBe(401);
    // The header wins over the query.
    expect((await fetch(url(`writeKey=${OPEN}`), { headers: { Authorization: basic("nope-nope-0001") } })).status).toBe(
      401,
    );
  });

  test("its preflight (the SDK sends Authorization) says yes to an origin a connection allows", async () => {
    const r = await fetch(url(`writeKey=${SHOP}`), {
      method: "OPTIONS",
      headers: {
        Origin: SHOP_ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
      },
    });
    expect(r.status).toBe(204);
    expect(r.headers.get("access-control-allow-origin")).toBe(SHOP_ORIGIN);
  });
});

describe("Segment's short routes and RudderStack's beacon route", () => {
  test("/v1/t, /v1/i, /v1/p, /v1/s, /v1/g, /v1/a take analytics.js's text/plain bodies with Basic auth", async () => {
    const bodies: Record<string, Record<string, unknown>> = {
      t: { event: "Clicked" },
      i: { traits: { plan: "pro" } },
      p: { name: "Home" },
      s: { name: "Main" },
      g: { groupId: "acme" },
      a: { previousId: "anon-1" },
    };
    const before = node.ingest.stats.accepted;
    for (const [letter, extra] of Object.entries(bodies)) {
      // The path's letter decides the type, whatever the body says.
      const r = await fetch(`${node.url}/v1/${letter}`, {
        method: "POST",
        headers: { Authorization: basic(OPEN), "Content-Type": "text/plain", Origin: "https://any.example" },
        body: JSON.stringify({ ...event("track"), ...extra, type: undefined, writeKey: OPEN }),
      });
      expect({ letter, status: r.status, body: await r.json() }).toEqual({
        letter,
        status: 200,
        body: { accepted: 1 },
      });
      expect(r.headers.get("access-control-allow-origin")).toBe("https://any.example");
    }
    expect(node.ingest.stats.accepted - before).toBe(6);
    const pre = await fetch(`${node.url}/v1/t`, {
      method: "OPTIONS",
      headers: {
        Origin: "https://any.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
      },
    });
    expect(pre.headers.get("access-control-allow-origin")).toBe("https://any.example");
  });

  test("/v1/b takes analytics.js batches: {batch, sentAt, writeKey}", async () => {
    const r = await fetch(`${node.url}/v1/b`, {
      method: "POST",
      headers: { Authorization: basic(OPEN), "Content-Type": "text/plain" },
      body: JSON.stringify({
        writeKey: OPEN,
        batch: [event("track", { event: "A" }), event("page", { name: "P" })],
        sentAt: new Date().toISOString(),
      }),
    });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ accepted: 2 });
  });

  test("/beacon/v1/batch?writeKey= takes sendBeacon's text/plain batch, with the key in the query", async () => {
    const r = await fetch(`${node.url}/beacon/v1/batch?writeKey=${OPEN}`, {
      method: "POST",
      headers: { "Content-Type": "text/plain;charset=UTF-8", Origin: "https://any.example" },
      body: JSON.stringify({ batch: [event("track", { event: "B" })], sentAt: new Date().toISOString() }),
    });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ accepted: 1 });
    expect(r.headers.get("access-control-allow-origin")).toBe("https://any.example");
    expect(r.headers.get("access-control-allow-credentials")).toBe("true");
  });

  test("the beacon route is keyless: an unknown key is refused before the body is read; the keyless body limit holds", async () => {
    const unknown = await fetch(`${node.url}/beacon/v1/batch?writeKey=nope-nope-0001`, {
      method: "POST",
      body: JSON.stringify({ batch: [event("track", { event: "B" })] }),
    });
    expect(unknown.status).toBe(401);
    const none = await fetch(`${node.url}/beacon/v1/batch`, {
      method: "POST",
      body: JSON.stringify({ batch: [event("track", { event: "B" })] }),
    });
    expect(none.status).toBe(401);
    // 1 MiB is the limit for a request without an Authorization header (README "key in the body").
    const big = JSON.stringify({
      batch: [event("track", { event: "B", properties: { pad: "x".repeat(1100 * 1024) } })],
    });
    const tooBig = await fetch(`${node.url}/beacon/v1/batch?writeKey=${OPEN}`, { method: "POST", body: big });
    expect(tooBig.status).toBe(413);
    expect((await tooBig.json()).error).toContain("Authorization header");
    const notObject = await fetch(`${node.url}/beacon/v1/batch?writeKey=${OPEN}`, { method: "POST", body: "[1,2,3]" });
    expect(notObject.status).toBe(400);
  });
});

test("beacon requests share the keyless in-flight budget: a stalled one fills it, authenticated senders are unaffected", async () => {
  // The node's own routes over its config and event log, with a budget of one keyless request.
  const app = new Elysia()
    .use(ingestRoutes(node.config, node.eventLog, { maxBodyKeyInFlightRequests: 1 }).app)
    .listen({ port: 0, hostname: "127.0.0.1" });
  const url = `http://127.0.0.1:${app.server!.port}`;
  const beacon = () =>
    fetch(`${url}/beacon/v1/batch?writeKey=${OPEN}`, {
      method: "POST",
      body: JSON.stringify({ batch: [event("track", { event: "B" })] }),
    });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let part = 0;
  const stalled = fetch(`${url}/beacon/v1/batch?writeKey=${OPEN}`, {
    method: "POST",
    body: new ReadableStream({
      async pull(c) {
        if (part++ === 0) return c.enqueue(new TextEncoder().encode('{"batch":['));
        await gate;
        c.enqueue(new TextEncoder().encode(JSON.stringify(event("track", { event: "S" })) + "]}"));
        c.close();
      },
    }),
  });
  try {
    let status = 0;
    for (const deadline = Date.now() + 10_000; status !== 429 && Date.now() < deadline; await Bun.sleep(50))
      status = (await beacon()).status;
    expect(status).toBe(429);
    const header = await fetch(`${url}/v1/t`, {
      method: "POST",
      headers: { Authorization: basic(OPEN) },
      body: JSON.stringify(event("track", { event: "H" })),
    });
    expect(header.status).toBe(200);
    release();
    expect((await stalled).status).toBe(200);
    expect((await beacon()).status).toBe(200);
  } finally {
    release();
    await app.stop(true);
  }
});

describe("Readable 403s and refusal logs", () => {
  const refusedLines = () => warnings("request refused: origin not allowed by the connection");

  test("a request that reached the node without a preflight and is refused for its Origin gets a 403 the page can read", async () => {
    const attempts: [string, RequestInit][] = [
      // text/plain with the key in the body: no preflight
      [
        `${node.url}/v1/track`,
        {
          method: "POST",
          headers: { "Content-Type": "text/plain", Origin: EVIL },
          body: JSON.stringify({ ...event("track", { event: "E" }), writeKey: SHOP }),
        },
      ],
      // sendBeacon's route
      [
        `${node.url}/beacon/v1/batch?writeKey=${SHOP}`,
        {
          method: "POST",
          headers: { "Content-Type": "text/plain", Origin: EVIL },
          body: JSON.stringify({ batch: [event("track", { event: "E" })] }),
        },
      ],
    ];
    for (const [url, init] of attempts) {
      const r = await fetch(url, init);
      expect(r.status).toBe(403);
      expect(r.headers.get("access-control-allow-origin")).toBe(EVIL);
      expect(r.headers.get("access-control-allow-credentials")).toBe("true");
      expect(r.headers.get("access-control-expose-headers")).toContain("Retry-After");
      const body = await r.json();
      expect(body.reason).toBe("origin_not_allowed");
      expect(body.error).toContain(EVIL);
    }
    // A key in the header, a settings fetch: readable too.
    const header = await fetch(`${node.url}/v1/t`, {
      method: "POST",
      headers: { Authorization: basic(SHOP), Origin: EVIL },
      body: JSON.stringify(event("track", { event: "E" })),
    });
    expect(header.status).toBe(403);
    expect(header.headers.get("access-control-allow-origin")).toBe(EVIL);
    const settings = await fetch(`${node.url}/v1/projects/${SHOP}/settings`, { headers: { Origin: EVIL } });
    expect(settings.status).toBe(403);
    expect(settings.headers.get("access-control-allow-origin")).toBe(EVIL);
    expect((await settings.json()).reason).toBe("origin_not_allowed");
    // The allowed page still gets in.
    const ok = await fetch(`${node.url}/v1/projects/${SHOP}/settings`, { headers: { Origin: SHOP_ORIGIN } });
    expect(ok.status).toBe(200);
  });

  test("the refusal is logged at warn with the connection and the origin, never the key, once per minute per origin", async () => {
    const lines = refusedLines().filter((l) => l.origin === EVIL);
    expect(lines.length).toBe(1);
    expect(lines[0]).toMatchObject({ level: "warn", connection: "shop", origin: EVIL });
    // Another origin is another line.
    await fetch(`${node.url}/v1/track`, {
      method: "POST",
      headers: { Authorization: basic(SHOP), Origin: "https://other.example" },
      body: "{}",
    });
    expect(refusedLines().filter((l) => l.origin === "https://other.example").length).toBe(1);
    for (const key of [SHOP, btoa(`${SHOP}:`)]) expect(rawLog.join("")).not.toContain(key);
  });

  test("a refused preflight is logged at warn", async () => {
    // On `node`, `open` allows every origin: a refused preflight needs a node where no connection does.
    const guarded = await startTestNode(
      nats.url,
      { "shop.yaml": webhookConnection("shop", [SHOP], `allowedOrigins: ["${SHOP_ORIGIN}"]\n`) },
      { ingestWorkers: 1 },
    );
    try {
      const p = await fetch(`${guarded.url}/sourceConfig/?writeKey=x`, {
        method: "OPTIONS",
        headers: { Origin: "https://nobody.example", "Access-Control-Request-Method": "GET" },
      });
      expect(p.headers.get("access-control-allow-origin")).toBeNull();
      expect(
        warnings("preflight refused: no connection allows this origin").filter(
          (l) => l.origin === "https://nobody.example",
        ),
      ).toEqual([expect.objectContaining({ level: "warn", origin: "https://nobody.example", path: "/sourceConfig/" })]);
    } finally {
      await guarded.stop();
    }
  });

  test("a refused webhook signature is logged at warn with the connection and the reason", async () => {
    const post = (token: string) =>
      fetch(`${node.url}/v1/webhooks/hook`, { method: "POST", headers: { "X-Hook-Token": token }, body: "{}" });
    expect((await post("wrong-token-000")).status).toBe(401);
    expect((await post("wrong-token-001")).status).toBe(401);
    const lines = warnings("webhook refused: check failed");
    expect(lines).toEqual([
      expect.objectContaining({ level: "warn", connection: "hook", reason: "X-Hook-Token header does not match" }),
    ]);
    expect(rawLog.join("")).not.toContain("wrong-token");
    expect((await post(HOOK_SECRET)).status).toBe(200);
  });
});
