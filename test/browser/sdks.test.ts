import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { basename, join } from "node:path";
import type { ClickHouseClient } from "@clickhouse/client";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { startClickHouse, startNats, startTestNode } from "../harness/services.ts";
import { chClient, rows } from "../harness/warehouse.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Issue 17: the two browser SDKs most senders use, unmodified, in Chromium, loaded with only their
 * documented self-hosting options pointed at the node: Segment's analytics.js
 * (`AnalyticsBrowser.load({writeKey, cdnURL})`, @segment/analytics-next's UMD build) and
 * RudderStack's JS SDK v3 (`load(writeKey, dataPlaneUrl, {configUrl})`, the npm package's bundled
 * UMD build, whose plugins need no CDN). The page and the bundles come from a server of their own
 * on another port, so every request to the node is cross-origin, as on a real site. identify,
 * track and page must land in ClickHouse as the SDK sent them, with batching off and on, and by
 * beacon (RudderStack's sendBeacon; analytics.js's keepalive flush when the page goes away). A page
 * on an origin the connection does not allow reads a 403 naming the reason, and the node logs it.
 */

const CHROMIUM = "/usr/bin/chromium";
const ROOT = join(import.meta.dir, "../..");
const SEGMENT_UMD = join(ROOT, "node_modules/@segment/analytics-next/dist/umd");
const RUDDER_UMD = join(ROOT, "node_modules/@rudderstack/analytics-js/dist/npm/modern/bundled/umd/index.js");
const SEG_KEY = "key-browser-sdk-segment-0001";
const RS_KEY = "key-browser-sdk-rudder-00001";

type Json = Record<string, any>;

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let db: ClickHouseClient;
let node: RunningNode;
let site: ReturnType<typeof Bun.serve>; // the allowed page origin
let elsewhere: ReturnType<typeof Bun.serve>; // an origin no connection allows
let browser: Browser;
const logs: Json[] = [];
const rawLog: string[] = [];
const write = process.stderr.write.bind(process.stderr);

const PAGE = (script: string) =>
  `<!doctype html><html><head><meta charset="utf-8"><title>Shop</title><script src="${script}"></script></head><body><h1>Shop</h1></body></html>`;

/** The page and the SDK bundles as a site would host them: files copied from node_modules, unchanged. */
function serveSite() {
  return Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      const path = new URL(request.url).pathname;
      if (path === "/segment.html")
        return new Response(PAGE("/sdk/segment/index.js"), { headers: { "Content-Type": "text/html" } });
      if (path === "/rudderstack.html")
        return new Response(PAGE("/sdk/rudderstack/index.js"), { headers: { "Content-Type": "text/html" } });
      if (path === "/blank.html")
        return new Response("<!doctype html><title>Next</title>", { headers: { "Content-Type": "text/html" } });
      if (path === "/sdk/rudderstack/index.js") return new Response(Bun.file(RUDDER_UMD));
      // analytics.js's optional chunks (trackLink, ajs_ query parameters…) sit next to its bundle.
      if (path.startsWith("/sdk/segment/")) {
        const file = Bun.file(join(SEGMENT_UMD, basename(path)));
        return file.size ? new Response(file) : new Response("not found", { status: 404 });
      }
      return new Response("not found", { status: 404 });
    },
  });
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM))
    throw new Error(
      `${CHROMIUM} not found: install Debian's chromium (npm test does it as root: apt-get install -y chromium)`,
    );
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const text = typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
    rawLog.push(text);
    for (const line of text.split("\n")) if (line.startsWith("{")) logs.push(JSON.parse(line));
    return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  const launching = chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Nothing but loopback resolves: an SDK reaching for its vendor's CDN or API fails here, and is seen.
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
  });
  site = serveSite();
  elsewhere = serveSite();
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  db = chClient(ch.url);
  const origin = `http://127.0.0.1:${site.port}`;
  const conn = (name: string, key: string) =>
    `connection: ${name}\nsource: ${name === "seg" ? "segment" : "rudderstack"}\nwriteKeys: ["${key}"]\nallowedOrigins: ["${origin}"]\npipelines:\n  - name: all\n    import: events\n`;
  node = await startTestNode(
    nats.url,
    { "seg.yaml": conn("seg", SEG_KEY), "rudder.yaml": conn("rudder", RS_KEY) },
    // One thread answering HTTP: the log tests read the lines this thread writes to stderr.
    { clickhouseUrl: ch.url, batchMaxAgeMs: 100, ingestWorkers: 1 },
  );
  browser = await launching;
  await node.pipelinesReady;
}, 120_000);

afterAll(async () => {
  process.stderr.write = write;
  await browser?.close();
  site?.stop(true);
  elsewhere?.stop(true);
  await node?.stop();
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
});

interface Session {
  context: BrowserContext;
  page: Page;
  /** Every request the page made to the node: method, path and body. */
  sent: { method: string; path: string; body: string | null; type: string }[];
  /** Requests to anything but loopback (a vendor CDN or API). */
  external: string[];
  errors: string[];
}

/** A fresh browser profile (no stored ids or queues) on a page of `server`. */
async function open(server: ReturnType<typeof Bun.serve>, path: string): Promise<Session> {
  const context = await browser.newContext();
  const s: Session = { context, page: await context.newPage(), sent: [], external: [], errors: [] };
  context.on("request", (r) => {
    const u = new URL(r.url());
    if (u.hostname !== "127.0.0.1") s.external.push(r.url());
    else if (u.port === String(node.port))
      s.sent.push({ method: r.method(), path: u.pathname + u.search, body: r.postData(), type: r.resourceType() });
  });
  s.page.on("pageerror", (e) => s.errors.push(String(e)));
  await s.page.goto(`http://127.0.0.1:${server.port}${path}`);
  return s;
}

/** The events in the POST bodies the SDK sent to the node (single events and batches). */
function eventsSent(s: Session): Json[] {
  const out: Json[] = [];
  for (const r of s.sent) {
    if (r.method !== "POST" || !r.body) continue;
    const body = JSON.parse(r.body);
    for (const e of Array.isArray(body.batch) ? body.batch : [body]) out.push(e);
  }
  return out;
}

/**
 * identify, track and page of `tag` (user-<tag>, see segment() and rudderstack()) are stored once
 * each with what the page passed; with `sent` (the bodies the SDK posted), exactly those events,
 * with the fields the SDK sent. Returns the rows by messageId.
 */
async function expectLanded(
  tag: string,
  connection: string,
  library: string,
  sent?: Json[],
): Promise<Map<string, Json>> {
  const query = `SELECT * FROM tributary.events FINAL WHERE connection = '${connection}' AND user_id = 'user-${tag}'`;
  let got: Json[] = [];
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await Bun.sleep(200)) {
    got = await rows(db, query).catch(() => got);
    if (got.length >= 3) break;
  }
  expect(got.map((r) => r.type).sort()).toEqual(["identify", "page", "track"]);
  const by = (type: string) => got.find((r) => r.type === type)!;
  for (const r of got) expect(r.context_library_name).toBe(library);
  const identify = by("identify");
  // analytics.js sends traits in `traits`, RudderStack in `context.traits`.
  expect({ ...JSON.parse(identify.context).traits, ...JSON.parse(identify.traits) }).toMatchObject({
    email: `${tag}@example.com`,
    plan: "pro",
  });
  expect(by("track")).toMatchObject({ event: "Order Completed" });
  expect(JSON.parse(by("track").properties)).toEqual({ orderId: `o-${tag}`, revenue: 89.9, currency: "EUR" });
  expect(by("page")).toMatchObject({ name: "Getting started", category: "Docs" });
  expect(JSON.parse(by("page").properties)).toMatchObject({ section: tag });
  const stored = new Map(got.map((r) => [r.message_id as string, r]));
  if (sent) {
    expect(sent.map((e) => e.messageId).sort()).toEqual([...stored.keys()].sort());
    for (const e of sent) {
      const r = stored.get(e.messageId)!;
      expect(r).toMatchObject({
        type: e.type,
        user_id: e.userId,
        anonymous_id: e.anonymousId ?? null,
        context_library_version: e.context.library.version,
      });
      expect(r.context_page_url).toBe(e.context.page.url);
      expect(r.context_user_agent).toBe(e.context.userAgent);
      if (e.type !== "identify") expect(JSON.parse(r.properties)).toEqual(e.properties);
    }
  }
  return stored;
}

/** analytics.js: load the self-hosting way, then identify, track and page; what each context says. */
async function segment(s: Session, options: Json, tag: string) {
  return s.page.evaluate(
    async ({ writeKey, cdnURL, options, tag }) => {
      const [analytics] = await (window as any).AnalyticsNext.AnalyticsBrowser.load({ writeKey, cdnURL }, options);
      const ctxs = [
        await analytics.identify(`user-${tag}`, { email: `${tag}@example.com`, plan: "pro" }),
        await analytics.track("Order Completed", { orderId: `o-${tag}`, revenue: 89.9, currency: "EUR" }),
        await analytics.page("Docs", "Getting started", { section: tag }),
      ];
      return ctxs.map((c: any) => ({
        messageId: c.event.messageId as string,
        failed: c.failedDelivery()?.reason?.message ?? null,
      }));
    },
    { writeKey: SEG_KEY, cdnURL: node.url, options, tag },
  );
}

/** RudderStack v3: load with configUrl, wait until ready, then identify, track and page. */
async function rudderstack(s: Session, options: Json, tag: string, readyWithinMs = 20_000) {
  await s.page.evaluate(
    async ({ writeKey, url, options, tag, readyWithinMs }) => {
      const ra = new (window as any).rudderanalytics.RudderAnalytics();
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("RudderStack SDK never became ready")), readyWithinMs);
        ra.load(writeKey, url, { configUrl: url, logLevel: "ERROR", ...options });
        ra.ready(() => {
          clearTimeout(t);
          resolve();
        });
      });
      ra.identify(`user-${tag}`, { email: `${tag}@example.com`, plan: "pro" });
      ra.track("Order Completed", { orderId: `o-${tag}`, revenue: 89.9, currency: "EUR" });
      ra.page("Docs", "Getting started", { section: tag });
    },
    { writeKey: RS_KEY, url: node.url, options, tag, readyWithinMs },
  );
}

const posts = (s: Session) => s.sent.filter((r) => r.method === "POST").map((r) => r.path);
async function until(what: string, check: () => boolean, timeoutMs = 20_000) {
  for (const deadline = Date.now() + timeoutMs; !check(); await Bun.sleep(100))
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
}

describe("Segment analytics.js (@segment/analytics-next 1.84, UMD)", () => {
  test("settings from the node; identify, track and page one request each, to the short routes; all land as sent", async () => {
    const s = await open(site, "/segment.html");
    const results = await segment(s, {}, "seg-standard");
    expect(results.map((r) => r.failed)).toEqual([null, null, null]);
    expect(s.sent[0]).toMatchObject({ method: "GET", path: `/v1/projects/${SEG_KEY}/settings` });
    await until("three posts", () => posts(s).length >= 3);
    expect(posts(s).sort()).toEqual(["/v1/i", "/v1/p", "/v1/t"]);
    const sent = eventsSent(s);
    expect(sent.map((e) => e.messageId).sort()).toEqual(results.map((r) => r.messageId).sort());
    await expectLanded("seg-standard", "seg", "analytics.js", sent);
    expect(s.external).toEqual([]);
    expect(s.errors).toEqual([]);
    await s.context.close();
  }, 60_000);

  test("batching (deliveryStrategy in the load options): one request to /v1/b; all land", async () => {
    const s = await open(site, "/segment.html");
    const results = await segment(
      s,
      {
        integrations: {
          "Segment.io": { deliveryStrategy: { strategy: "batching", config: { size: 3, timeout: 60_000 } } },
        },
      },
      "seg-batch",
    );
    await until("the batch", () => posts(s).length >= 1);
    expect(posts(s)).toEqual(["/v1/b"]);
    const sent = eventsSent(s);
    expect(sent.map((e) => e.messageId).sort()).toEqual(results.map((r) => r.messageId).sort());
    await expectLanded("seg-batch", "seg", "analytics.js", sent);
    expect(s.external).toEqual([]);
    await s.context.close();
  }, 60_000);

  test("the page goes away with events still batched: analytics.js flushes them with keepalive, and they land", async () => {
    const s = await open(site, "/segment.html");
    const results = await segment(
      s,
      {
        integrations: {
          "Segment.io": { deliveryStrategy: { strategy: "batching", config: { size: 100, timeout: 600_000 } } },
        },
      },
      "seg-unload",
    );
    expect(posts(s)).toEqual([]);
    // Chromium does not report a keepalive request made while the page unloads; ClickHouse shows it arrived.
    await s.page.goto(`http://127.0.0.1:${site.port}/blank.html`);
    const stored = await expectLanded("seg-unload", "seg", "analytics.js");
    expect([...stored.values()].map((r) => r.message_id).sort()).toEqual(results.map((r) => r.messageId).sort());
    await s.context.close();
  }, 60_000);
});

describe("RudderStack JS SDK v3 (@rudderstack/analytics-js 3.34, bundled UMD)", () => {
  test("source config from the node; identify, track and page one request each; all land as sent", async () => {
    const s = await open(site, "/rudderstack.html");
    await rudderstack(s, {}, "rs-standard");
    expect(s.sent.find((r) => r.method === "GET")?.path).toStartWith("/sourceConfig/?");
    await until("three posts", () => posts(s).length >= 3);
    expect(posts(s).sort()).toEqual(["/v1/identify", "/v1/page", "/v1/track"]);
    await expectLanded("rs-standard", "rudder", "RudderLabs JavaScript SDK", eventsSent(s));
    expect(s.external).toEqual([]);
    await s.context.close();
  }, 60_000);

  test("batching (queueOptions.batch): /v1/batch; all land", async () => {
    const s = await open(site, "/rudderstack.html");
    await rudderstack(
      s,
      { queueOptions: { batch: { enabled: true, maxItems: 3, flushInterval: 60_000 } } },
      "rs-batch",
    );
    await until("the batch", () => posts(s).length >= 1);
    expect(posts(s)).toEqual(["/v1/batch"]);
    await expectLanded("rs-batch", "rudder", "RudderLabs JavaScript SDK", eventsSent(s));
    await s.context.close();
  }, 60_000);

  test("beacon (useBeacon): sendBeacon to /beacon/v1/batch?writeKey=…; all land", async () => {
    const s = await open(site, "/rudderstack.html");
    await rudderstack(
      s,
      { useBeacon: true, beaconQueueOptions: { maxItems: 3, flushQueueInterval: 60_000 } },
      "rs-beacon",
    );
    await until("the beacon", () => posts(s).length >= 1);
    expect(posts(s)).toEqual([`/beacon/v1/batch?writeKey=${RS_KEY}`]);
    expect(s.sent.find((r) => r.method === "POST")!.type).toBe("ping"); // navigator.sendBeacon, as Chromium types it
    // Chromium does not give a beacon's body to the test: the events are checked against what the page passed.
    await expectLanded("rs-beacon", "rudder", "RudderLabs JavaScript SDK");
    await s.context.close();
  }, 60_000);
});

describe("a page on an origin the connection does not allow", () => {
  test("reads a 403 naming the reason; the node logs it at warn with the connection and origin, never the key; nothing lands", async () => {
    const s = await open(elsewhere, "/segment.html");
    const origin = `http://127.0.0.1:${elsewhere.port}`;
    const messageId = `refused-${crypto.randomUUID()}`;
    const seen = await s.page.evaluate(
      async ({ url, segKey, rsKey, messageId }) => {
        const read = async (r: Response) => ({ status: r.status, body: await r.json() });
        const event = { type: "track", event: "Refused", userId: "u-refused", messageId };
        return {
          // text/plain with the key in the body: no preflight, so the request reaches the node.
          body: await read(
            await fetch(`${url}/v1/t`, {
              method: "POST",
              headers: { "Content-Type": "text/plain" },
              body: JSON.stringify({ ...event, writeKey: segKey }),
            }),
          ),
          // what sendBeacon sends (with credentials), through fetch so the page can look at the answer
          beacon: await read(
            await fetch(`${url}/beacon/v1/batch?writeKey=${rsKey}`, {
              method: "POST",
              credentials: "include",
              headers: { "Content-Type": "text/plain" },
              body: JSON.stringify({ batch: [event] }),
            }),
          ),
          queued: navigator.sendBeacon(
            `${url}/beacon/v1/batch?writeKey=${rsKey}`,
            new Blob([JSON.stringify({ batch: [event] })], { type: "text/plain" }),
          ),
          // analytics.js itself: its settings fetch is refused, and load() rejects with the reason.
          load: await (window as any).AnalyticsNext.AnalyticsBrowser.load({ writeKey: segKey, cdnURL: url }).then(
            () => "loaded",
            (e: Error) => e.message,
          ),
        };
      },
      { url: node.url, segKey: SEG_KEY, rsKey: RS_KEY, messageId },
    );
    expect(seen.body.status).toBe(403);
    expect(seen.body.body).toMatchObject({ reason: "origin_not_allowed" });
    expect(seen.body.body.error).toContain(origin);
    expect(seen.beacon.status).toBe(403);
    expect(seen.beacon.body.reason).toBe("origin_not_allowed");
    expect(seen.queued).toBe(true);
    expect(seen.load).toContain("origin_not_allowed");
    await until("the beacon reached the node", () => s.sent.filter((r) => r.type === "ping").length >= 1);

    const refused = logs.filter(
      (l) =>
        l.level === "warn" && l.msg === "request refused: origin not allowed by the connection" && l.origin === origin,
    );
    expect(refused.map((l) => l.connection).sort()).toEqual(["rudder", "seg"]);
    for (const key of [SEG_KEY, RS_KEY, btoa(`${SEG_KEY}:`), btoa(`${RS_KEY}:`)])
      expect(rawLog.join("")).not.toContain(key);
    // The allowed page's events are there; this one never is.
    await Bun.sleep(500);
    expect(await rows(db, `SELECT message_id FROM tributary.events WHERE message_id = '${messageId}'`)).toEqual([]);
    await s.context.close();
  }, 60_000);

  test("RudderStack there: its preflight is refused (logged at warn) and the SDK never becomes ready", async () => {
    const s = await open(elsewhere, "/rudderstack.html");
    const origin = `http://127.0.0.1:${elsewhere.port}`;
    // Its source config fetch fails at once (a refused preflight): 5 s is ample to see it is not ready.
    const err = await rudderstack(s, {}, "rs-refused", 5_000).then(
      () => "ready",
      (e: Error) => e.message,
    );
    expect(err).toContain("never became ready");
    expect(
      logs.filter(
        (l) =>
          l.level === "warn" && l.msg === "preflight refused: no connection allows this origin" && l.origin === origin,
      ).length,
    ).toBeGreaterThanOrEqual(1);
    await s.context.close();
  }, 60_000);
});
