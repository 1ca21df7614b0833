import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { startTestNode, webhookConnection } from "../harness/services.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Issue 16 #8–#10, over HTTP against real nodes: TRIBUTARY_DEV_ADMIN against DNS rebinding and
 * cross-site requests, CORS preflights that say yes only for an allowed origin, and /readyz that
 * tells only ok/fail without the admin token.
 */

const KEY = "key-edge-admin-0001";
const ADMIN = "admin-edge-token-0123456789";
// A dev node (no admin token, TRIBUTARY_DEV_ADMIN) with a pipeline a replay can start on.
const stack = useStack(
  { "dev.yaml": webhookConnection("dev", [KEY], "pipelines:\n  - name: all\n    import: events\n") },
  { devAdmin: true },
);
const port = () => new URL(stack.node.url).port;

describe("#8 TRIBUTARY_DEV_ADMIN", () => {
  test("a loopback caller naming loopback in Host (and an Origin on loopback, if any) is let in", async () => {
    for (const host of [`127.0.0.1:${port()}`, `localhost:${port()}`, `[::1]:${port()}`, "localhost"]) {
      expect((await fetch(`${stack.node.url}/v1/pipelines`, { headers: { Host: host } })).status).toBe(200);
    }
    const r = await fetch(`${stack.node.url}/v1/connections`, { headers: { Origin: `http://localhost:${port()}` } });
    expect(r.status).toBe(200);
  });

  test("DNS rebinding: a foreign name in Host reads nothing, on every admin route", async () => {
    for (const path of [
      "/v1/pipelines",
      "/v1/connections",
      "/metrics",
      "/v1/replays",
      "/v1/connections/dev/events/live",
      "/v1/connections/dev/events/x",
    ]) {
      const r = await fetch(`${stack.node.url}${path}`, { headers: { Host: `rebind.attacker.example:${port()}` } });
      expect({ path, status: r.status }).toEqual({ path, status: 403 });
      expect((await r.json()).error).toContain("Host");
    }
  });

  test("a cross-site text/plain POST does not start a replay; the same from a loopback page does", async () => {
    const post = (origin: string) =>
      fetch(`${stack.node.url}/v1/pipelines/all/replay`, {
        method: "POST",
        headers: { Origin: origin, "Content-Type": "text/plain" },
        body: JSON.stringify({ dryRun: true }),
      });
    const foreign = await post("https://evil.example");
    expect(foreign.status).toBe(403);
    expect((await foreign.json()).error).toContain("another site");
    expect((await post("null")).status).toBe(403); // a sandboxed frame or a file: page
    const replays = (await (await fetch(`${stack.node.url}/v1/replays`)).json()).replays;
    expect(replays).toEqual([]);
    expect((await post(`http://127.0.0.1:${port()}`)).status).toBe(202);
  });
});

describe("#9 and #10, on nodes of their own", () => {
  let guarded: RunningNode;
  let open: RunningNode;
  beforeAll(async () => {
    // Every key connection lists its origins: only those are ever reflected.
    guarded = await startTestNode(
      stack.nats.url,
      {
        "a.yaml": webhookConnection("shop", ["key-edge-shop-0001"], 'allowedOrigins: ["https://shop.example"]\n'),
        "b.yaml": webhookConnection("blog", ["key-edge-blog-0001"], 'allowedOrigins: ["https://blog.example"]\n'),
        "r.yaml": "connection: hook\nsource: raw\nbody: json\ninsecure: true\n",
      },
      { adminToken: ADMIN },
    );
    // A connection without allowedOrigins allows every origin.
    open = await startTestNode(stack.nats.url, { "o.yaml": webhookConnection("open", ["key-edge-open-0001"]) });
  });
  afterAll(async () => {
    await Promise.all([guarded?.stop(), open?.stop()]);
  });

  const preflight = (node: RunningNode, origin: string, path = "/v1/batch") =>
    fetch(`${node.url}${path}`, {
      method: "OPTIONS",
      headers: {
        Origin: origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
      },
    });

  test("#9 a preflight says yes only to an origin some connection allows, and never with credentials", async () => {
    for (const path of ["/v1/batch", "/v1/track", "/v1/events"]) {
      const evil = await preflight(guarded, "https://evil.example", path);
      expect(evil.status).toBe(204);
      expect(evil.headers.get("access-control-allow-origin")).toBeNull();
      expect(evil.headers.get("access-control-allow-credentials")).toBeNull();
      expect(evil.headers.get("vary")).toContain("Origin");
    }
    for (const origin of ["https://shop.example", "https://blog.example"]) {
      const ok = await preflight(guarded, origin);
      expect(ok.headers.get("access-control-allow-origin")).toBe(origin);
      expect(ok.headers.get("access-control-allow-credentials")).toBeNull();
    }
    const any = await preflight(open, "https://anyone.example");
    expect(any.headers.get("access-control-allow-origin")).toBe("https://anyone.example");
    expect(any.headers.get("access-control-allow-credentials")).toBeNull();
  });

  test("#9 answers: the origin is reflected for an allowed page; credentials only for a body-keyed (sendBeacon) request", async () => {
    const track = (extra: Record<string, unknown> = {}) =>
      JSON.stringify({ type: "track", event: "E", userId: "u", messageId: crypto.randomUUID(), ...extra });
    const header = await fetch(`${guarded.url}/v1/track`, {
      method: "POST",
      headers: { Authorization: "Bearer key-edge-shop-0001", Origin: "https://shop.example" },
      body: track(),
    });
    expect(header.status).toBe(200);
    expect(header.headers.get("access-control-allow-origin")).toBe("https://shop.example");
    expect(header.headers.get("access-control-allow-credentials")).toBeNull();
    const beacon = await fetch(`${guarded.url}/v1/track`, {
      method: "POST",
      headers: { "Content-Type": "text/plain;charset=UTF-8", Origin: "https://shop.example" },
      body: track({ writeKey: "key-edge-shop-0001" }),
    });
    expect(beacon.status).toBe(200);
    expect(beacon.headers.get("access-control-allow-origin")).toBe("https://shop.example");
    expect(beacon.headers.get("access-control-allow-credentials")).toBe("true");
    // A wrong key from a foreign page: 401, and no CORS yes for that page.
    const unknown = await fetch(`${guarded.url}/v1/track`, {
      method: "POST",
      headers: { Authorization: "Bearer nope-nope-nope", Origin: "https://evil.example" },
      body: track(),
    });
    expect(unknown.status).toBe(401);
    expect(unknown.headers.get("access-control-allow-origin")).toBeNull();
    expect(unknown.headers.get("access-control-allow-credentials")).toBeNull();
  });

  test("#10 /readyz: ok or fail to anyone; the configuration error only with the admin token", async () => {
    const dir = guarded.config.options.dir;
    writeFileSync(join(dir, "broken.yaml"), "connection: secret_internal_name\nsource: webhook\nwriteKeys: []\n");
    for (const deadline = Date.now() + 10_000; !guarded.config.lastError && Date.now() < deadline; )
      await Bun.sleep(50);
    expect(guarded.config.lastError).toContain("broken.yaml");
    for (const headers of [
      {},
      { Authorization: "Bearer key-edge-shop-0001" },
      { Authorization: "Bearer wrong-admin-token" },
    ] as Record<string, string>[]) {
      const r = await fetch(`${guarded.url}/readyz`, { headers });
      expect(r.status).toBe(200);
      const text = await r.text();
      expect(JSON.parse(text)).toEqual({ ok: true });
      expect(text).not.toContain("broken.yaml");
    }
    const admin = await (
      await fetch(`${guarded.url}/readyz`, { headers: { Authorization: `Bearer ${ADMIN}` } })
    ).json();
    expect(admin).toMatchObject({ ok: true, nats: true, clickhouse: null });
    expect(admin.config.error).toContain("broken.yaml");
  });
});

describe("#11 Segment's first-event signature is opt-in per connection", () => {
  const SECRET = "segment-edge-secret-0123";
  let node: RunningNode;
  beforeAll(async () => {
    const segment = (name: string, extra = "") =>
      `connection: ${name}\nsource: raw\nbody: json-array\ncheck: segment\nsecret: "${SECRET}"\n${extra}`;
    node = await startTestNode(stack.nats.url, {
      "strict.yaml": segment("seg-strict"),
      "batch.yaml": segment("seg-batch", "segmentBatchFallback: true\n"),
    });
  });
  afterAll(async () => {
    await node?.stop();
  });
  const sign = (data: unknown) => createHmac("sha1", SECRET).update(JSON.stringify(data)).digest("hex");
  const hook = (connection: string, body: string, signature: string) =>
    fetch(`${node.url}/v1/webhooks/${connection}`, {
      method: "POST",
      headers: { "X-Signature": signature, "Content-Type": "application/json" },
      body,
    });

  test("by default a captured signed event B cannot carry [B, anything…]; a whole-body signature still passes", async () => {
    const b = { type: "track", event: "Signed Up", userId: "u1", messageId: "seg-b" };
    const forged = JSON.stringify([
      b,
      { type: "track", event: "Refund Issued", userId: "attacker", messageId: "seg-forged" },
    ]);
    const r = await hook("seg-strict", forged, sign(b));
    expect(r.status).toBe(401);
    expect((await hook("seg-strict", JSON.stringify([b]), sign([b]))).status).toBe(200);
  });

  test("with segmentBatchFallback: true the first-event signature is accepted, with its documented risk", async () => {
    const events = [
      { type: "track", event: "A", userId: "u1", messageId: "seg-1" },
      { type: "track", event: "B", userId: "u1", messageId: "seg-2" },
    ];
    expect((await hook("seg-batch", JSON.stringify(events), sign(events[0]))).status).toBe(200);
  });
});
