import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import { constants, deflateRawSync, gzipSync, inflateRawSync } from "node:zlib";
import fc from "fast-check";
import { startNats, startTestNode } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import { bodyish, fuzzTimeout, hostileJson, params } from "../harness/fuzz.ts";
import { setLogLevel } from "../../src/util/log.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Issue 7, hostile input: each case gets a clear 4xx (or, where the contract says so, a 200 with
 * the bad events in `rejected`), nothing of a refused request is stored, and the node answers a
 * normal request quickly afterwards. The node runs in this process, so the tests also see its
 * memory, its logs and Object.prototype.
 */

const KEY = "key-hostile-0001-abcdef";
const ADMIN = "admin-hostile-token-0123456789";
const RAW_SECRET = "raw-secret-hostile-0123456789";
const BODY_TIMEOUT_MS = 3000;
const files = {
  "hostile.yaml": `connection: hostile\nsource: webhook\nwriteKeys: ["${KEY}"]\n`,
  "raw.yaml": `connection: rawhook\nsource: raw\nbody: json\nheaders: all\ncheck: {header: X-Token, equals: "${RAW_SECRET}"}\n`,
};

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
const logs: string[] = [];
const bodies: string[] = [];
const realWrite = process.stderr.write.bind(process.stderr);

beforeAll(async () => {
  // Every log line the node writes during these tests, at every level, is kept and checked for secrets.
  setLogLevel("debug");
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    logs.push(typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk));
    return true;
  }) as typeof process.stderr.write;
  nats = await startNats();
  // The body deadline is short here so slow-loris cases finish fast (every thread gets it).
  node = await startTestNode(nats.url, files, { adminToken: ADMIN, ingest: { bodyTimeoutMs: BODY_TIMEOUT_MS } });
  // The yardstick for "quickly" on this machine at this moment: a normal exchange before any harm.
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await fetch(`${node.url}/healthz`);
    const e = track();
    await (await post("/v1/events", JSON.stringify(e))).text();
    times.push(performance.now() - t0);
    storedOnce.add(e.messageId);
  }
  normalMs = times.sort((a, b) => a - b)[2]!;
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
  process.stderr.write = realWrite;
  setLogLevel((process.env.LOG_LEVEL as "warn") ?? "warn");
});

let n = 0;
/** Median time of /healthz plus a one-event POST on the fresh node, measured in beforeAll. */
let normalMs = 0;
/** "Quickly", for a normal exchange after hostile input: 2 s, or 20× the exchange before any harm if that is more. */
const quickly = () => Math.max(2000, 20 * normalMs);
/** `work` run in this process `times` times: its time, the yardstick for the node doing the same work. */
function timeOf(work: () => unknown, times = 1): number {
  const t0 = performance.now();
  for (let i = 0; i < times; i++) work();
  return performance.now() - t0;
}
const uid = (p = "h") => `${p}-${Date.now()}-${n++}`;
const track = (extra: Record<string, unknown> = {}) => ({
  type: "track",
  event: "Clicked",
  userId: "u1",
  messageId: uid(),
  ...extra,
});
const post = (path: string, body: BodyInit | null, headers: Record<string, string> = {}) =>
  fetch(`${node.url}${path}`, { method: "POST", headers: { Authorization: `Bearer ${KEY}`, ...headers }, body });
const answer = async (r: Response) => {
  const text = await r.text();
  bodies.push(text);
  let body: any;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: r.status, body };
};

/** messageIds that must end up stored exactly once, and ones that must never be stored. */
const storedOnce = new Set<string>();
const neverStored = new Set<string>();

/** The node still answers: /healthz and a valid POST, both quickly. */
async function unharmed() {
  const t0 = performance.now();
  expect((await fetch(`${node.url}/healthz`)).status).toBe(200);
  const e = track();
  const r = await answer(await post("/v1/events", JSON.stringify(e)));
  expect(r, "the node answers a valid POST").toEqual({ status: 200, body: { accepted: 1 } });
  storedOnce.add(e.messageId);
  expect(performance.now() - t0).toBeLessThan(quickly());
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
}

/** A raw HTTP/1.1 exchange: what came back, and when the socket closed. */
function rawHttp(
  head: string,
  opts: { body?: string | Buffer; trickle?: { bytes: string; everyMs: number }; endAfterMs?: number } = {},
) {
  const t0 = performance.now();
  const socket: Socket = connect(node.port, "127.0.0.1");
  let got = "";
  let timer: ReturnType<typeof setInterval> | undefined;
  const done = new Promise<{ response: string; closedAfterMs: number }>((resolve) => {
    socket.on("data", (d) => (got += d));
    socket.on("error", () => {});
    socket.on("close", () => {
      clearInterval(timer);
      resolve({ response: got, closedAfterMs: performance.now() - t0 });
    });
  });
  socket.write(head);
  if (opts.body) socket.write(opts.body);
  if (opts.trickle)
    timer = setInterval(() => socket.writable && socket.write(opts.trickle!.bytes), opts.trickle.everyMs);
  if (opts.endAfterMs) setTimeout(() => socket.end(), opts.endAfterMs);
  return { socket, done };
}
const head = (length: number | "chunked", path = "/v1/events") =>
  `POST ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${KEY}\r\n${length === "chunked" ? "Transfer-Encoding: chunked" : `Content-Length: ${length}`}\r\n\r\n`;

describe("malformed bodies", () => {
  test("malformed and truncated JSON → 400 'invalid JSON: …'; nothing of a truncated batch is stored", async () => {
    const batch = [track(), track(), track()];
    const text = JSON.stringify(batch);
    for (const body of [
      '{"type":"track",',
      text.slice(0, text.length / 2),
      "[1,2,",
      "{'single': 'quotes'}",
      "NaN",
      "[1,]",
      '{"a":1}}',
      "\u0000",
    ]) {
      const r = await answer(await post("/v1/events", body));
      expect(r.status).toBe(400);
      expect(r.body.error).toMatch(/^invalid JSON: /);
    }
    for (const e of batch) neverStored.add(e.messageId);
    await unharmed();
  }, 60_000);

  test("a body cut short on the wire (Content-Length larger than what is sent, then FIN): nothing stored, nothing logged as an error", async () => {
    const e = track();
    const errorsBefore = logs.filter((l) => l.includes('"level":"error"')).length;
    const { done } = rawHttp(head(1000), { body: JSON.stringify([e]).slice(0, 40), endAfterMs: 100 });
    await done;
    neverStored.add(e.messageId);
    await unharmed();
    expect(logs.filter((l) => l.includes('"level":"error"')).length).toBe(errorsBefore);
  }, 60_000);

  test("empty bodies → 400 'invalid JSON: the body is empty'", async () => {
    for (const [body, headers] of [
      ["", {}],
      [null, {}],
      ["  \n\t ", {}],
      [gzipSync(""), { "Content-Encoding": "gzip" }],
    ] as [BodyInit | null, Record<string, string>][]) {
      const r = await answer(await post("/v1/events", body, headers));
      expect(r).toEqual({ status: 400, body: { error: "invalid JSON: the body is empty" } });
    }
    await unharmed();
  }, 60_000);

  test("wrong content types: a JSON body is accepted whatever the type; a body that is not JSON is 400", async () => {
    const types = [
      "text/plain",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "application/xml",
      "image/png",
      "application/json; charset=latin1",
      "garbage/;;;",
    ];
    for (const type of types) {
      const e = track();
      expect((await answer(await post("/v1/events", JSON.stringify(e), { "Content-Type": type }))).status).toBe(200);
      storedOnce.add(e.messageId);
    }
    const form = new FormData();
    form.set("type", "track");
    for (const [body, type] of [
      ["type=track&userId=u", "application/x-www-form-urlencoded"],
      [form, undefined],
      ["<event/>", "application/xml"],
    ] as [BodyInit, string | undefined][]) {
      const r = await answer(await post("/v1/events", body, type ? { "Content-Type": type } : {}));
      expect(r.status).toBe(400);
      expect(r.body.error).toMatch(/^invalid JSON: /);
    }
    await unharmed();
  }, 60_000);

  test("invalid UTF-8 bytes → 400 'body is not valid UTF-8' (never silently replaced by U+FFFD), also inside gzip", async () => {
    const e = track();
    const json = JSON.stringify([e]);
    const at = json.indexOf("Clicked");
    for (const bad of [
      [0xff],
      [0xc0, 0x80] /* overlong NUL */,
      [0xed, 0xa0, 0x80] /* an encoded surrogate */,
      [0xe2, 0x82] /* truncated sequence */,
      [0xf4, 0x90, 0x80, 0x80] /* past U+10FFFF */,
    ]) {
      const bytes = Buffer.concat([Buffer.from(json.slice(0, at)), Buffer.from(bad), Buffer.from(json.slice(at))]);
      expect(await answer(await post("/v1/events", bytes))).toEqual({
        status: 400,
        body: { error: "body is not valid UTF-8" },
      });
      expect(await answer(await post("/v1/events", gzipSync(bytes), { "Content-Encoding": "gzip" }))).toEqual({
        status: 400,
        body: { error: "body is not valid UTF-8" },
      });
    }
    neverStored.add(e.messageId);
    await unharmed();
  }, 60_000);
});

describe("shapes and sizes", () => {
  const deep = (depth: number, leaf = "1") => '{"a":'.repeat(depth) + leaf + "}".repeat(depth);

  test("nesting: an event may nest 100 levels; deeper is rejected in `rejected` naming the field, quickly, even 100,000 deep", async () => {
    // The event is level 1: properties and 98 more objects {"a": …} below it make 100 levels.
    const ok = track(),
      tooDeep = track(),
      veryDeep = track();
    const body = `[${JSON.stringify({ ...ok, properties: 0 }).replace('"properties":0', `"properties":${deep(99)}`)},${JSON.stringify({ ...tooDeep, properties: 0 }).replace('"properties":0', `"properties":${deep(100)}`)},${JSON.stringify({ ...veryDeep, context: 0 }).replace('"context":0', `"context":${deep(100_000)}`)}]`;
    // Quickly: within 10× what parsing the body here takes (the depth check must not be worse than linear), plus 2 s.
    const parse = timeOf(() => JSON.parse(body));
    const t0 = performance.now();
    const r = await answer(await post("/v1/events", body));
    expect(performance.now() - t0).toBeLessThan(2000 + 10 * parse);
    expect(r).toEqual({
      status: 200,
      body: {
        accepted: 1,
        rejected: [
          { index: 1, messageId: tooDeep.messageId, error: '"properties" nests deeper than 100 levels' },
          { index: 2, messageId: veryDeep.messageId, error: '"context" nests deeper than 100 levels' },
        ],
      },
    });
    storedOnce.add(ok.messageId);
    neverStored.add(tooDeep.messageId).add(veryDeep.messageId);
    await unharmed();
  }, 60_000);

  test("a whole body nested 4 million deep: JSON.parse copes, the answer is 400 within seconds", async () => {
    const depth = 4_000_000;
    const body = "[".repeat(depth) + "]".repeat(depth);
    // Within seconds: 10× what JSON.parse of it takes here, plus 2 s.
    const parse = timeOf(() => JSON.parse(body));
    const t0 = performance.now();
    const r = await answer(await post("/v1/events", body));
    expect(r).toEqual({
      status: 400,
      body: {
        error: "no valid events in the request",
        rejected: [{ index: 0, error: "an event must be a JSON object" }],
      },
    });
    expect(performance.now() - t0).toBeLessThan(2000 + 10 * parse);
    await unharmed();
  }, 60_000);

  test("a very wide object (100,000 keys) is rejected in `rejected` by the 256 KiB event limit; its siblings are kept", async () => {
    const wide = track({ properties: Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`k${i}`, i])) });
    const ok = track();
    const r = await answer(await post("/v1/events", JSON.stringify([wide, ok])));
    expect(r.status).toBe(200);
    expect(r.body.accepted).toBe(1);
    expect(r.body.rejected).toEqual([
      {
        index: 0,
        messageId: wide.messageId,
        error: expect.stringMatching(/^event is \d+ bytes as JSON, over the 262144-byte limit$/),
      },
    ]);
    storedOnce.add(ok.messageId);
    neverStored.add(wide.messageId);
    await unharmed();
  }, 60_000);

  test("huge strings: a 15 MiB string is one rejected event; a body over 16 MiB is 413; a 16 MiB key is not echoed back", async () => {
    const big = track({ properties: { s: "x".repeat(15 * 1024 * 1024) } });
    const r1 = await answer(await post("/v1/events", JSON.stringify(big)));
    expect(r1.status).toBe(400);
    expect(r1.body.rejected).toEqual([
      { index: 0, messageId: big.messageId, error: expect.stringMatching(/over the 262144-byte limit/) },
    ]);
    const r2 = await answer(
      await post("/v1/events", JSON.stringify(track({ properties: { s: "x".repeat(17 * 1024 * 1024) } }))),
    );
    expect(r2).toEqual({ status: 413, body: { error: "request body exceeds 16777216 bytes" } });
    // An error that names a field a sender made huge stays short.
    const r3 = await answer(
      await post("/v1/events", JSON.stringify(track({ context: { consents: { ["p".repeat(1_000_000)]: "yes" } } }))),
    );
    expect(r3.status).toBe(400);
    expect(r3.body.rejected[0].error.length).toBeLessThanOrEqual(301);
    // A messageId over 100 characters is the reason for the rejection, not something to echo.
    const r4 = await answer(await post("/v1/events", JSON.stringify(track({ messageId: "m".repeat(1_000_000) }))));
    expect(r4).toEqual({
      status: 400,
      body: {
        error: "no valid events in the request",
        rejected: [{ index: 0, error: '"messageId" must be a string of 1 to 100 characters' }],
      },
    });
    neverStored.add(big.messageId);
    await unharmed();
  }, 60_000);

  test("huge numbers: 1e400 (Infinity to JSON.parse) is rejected naming the field; 1e308 is kept; an id past 2^53 is rejected", async () => {
    const inf = track(),
      negInf = track(),
      max = track(),
      bigId = track(),
      bigGroup = track();
    const text = `[${JSON.stringify({ ...inf, properties: { price: 0 } }).replace('"price":0', '"price":1e400')},${JSON.stringify({ ...negInf, properties: { list: [1, 2, 0] } }).replace("[1,2,0]", "[1,2,-1e999]")},${JSON.stringify({ ...max, properties: { n: 1e308, tiny: 0 } }).replace('"tiny":0', '"tiny":1e-400')},${JSON.stringify({ ...bigId, userId: 0 }).replace('"userId":0', '"userId":12345678901234567890')},${JSON.stringify({ ...bigGroup, type: "group", groupId: 0 }).replace('"groupId":0', '"groupId":9007199254740993')}]`;
    const r = await answer(await post("/v1/events", text));
    expect(r).toEqual({
      status: 200,
      body: {
        accepted: 1,
        rejected: [
          {
            index: 0,
            messageId: inf.messageId,
            error: '"properties.price" is a number too large for JSON (it overflows to Infinity)',
          },
          {
            index: 1,
            messageId: negInf.messageId,
            error: '"properties.list.2" is a number too large for JSON (it overflows to Infinity)',
          },
          {
            index: 3,
            messageId: bigId.messageId,
            error: '"userId" is a number too large to keep exactly; send it as a string',
          },
          {
            index: 4,
            messageId: bigGroup.messageId,
            error: '"groupId" is a number too large to keep exactly; send it as a string',
          },
        ],
      },
    });
    storedOnce.add(max.messageId);
    for (const e of [inf, negInf, bigId, bigGroup]) neverStored.add(e.messageId);
    const stored = (await storedEvents(node.bus, "hostile")).find((e) => e.messageId === max.messageId)!;
    expect(stored.properties).toEqual({ n: 1e308, tiny: 0 });
    await unharmed();
  }, 60_000);

  test("10,000-element arrays are accepted, every event stored once", async () => {
    const events = Array.from({ length: 10_000 }, () => track());
    const r = await answer(await post("/v1/events", JSON.stringify(events)));
    expect(r).toEqual({ status: 200, body: { accepted: 10_000 } });
    for (const e of events) storedOnce.add(e.messageId);
    // Also as a property array inside one event (under the size limit).
    const e = track({ properties: { list: Array.from({ length: 10_000 }, (_, i) => i) } });
    expect((await answer(await post("/v1/events", JSON.stringify(e)))).status).toBe(200);
    storedOnce.add(e.messageId);
    await unharmed();
  }, 60_000);

  test("timestamps out of range or impossible → the event is rejected naming the field; the edges of 0000–9999 are kept", async () => {
    const bad: [Record<string, unknown>, string][] = [
      [{ timestamp: "99999-01-01T00:00:00Z" }, '"timestamp" must be an ISO-8601 timestamp'],
      [{ timestamp: "-0001-01-01T00:00:00Z" }, '"timestamp" must be an ISO-8601 timestamp'],
      [{ timestamp: "2025-13-45T99:99:99Z" }, '"timestamp" is not a valid date: "2025-13-45T99:99:99Z"'],
      [{ timestamp: "2025-02-30T00:00:00Z" }, '"timestamp" is not a valid date: "2025-02-30T00:00:00Z"'],
      [{ timestamp: "2025-02-29T00:00:00Z" }, '"timestamp" is not a valid date: "2025-02-29T00:00:00Z"'],
      [{ sentAt: "2025-04-31T00:00:00Z" }, '"sentAt" is not a valid date: "2025-04-31T00:00:00Z"'],
      [
        { originalTimestamp: "2025-01-01T00:00:00+99:99" },
        '"originalTimestamp" is not a valid date: "2025-01-01T00:00:00+99:99"',
      ],
      [{ timestamp: "0000-01-01T00:00:00+01:00" }, '"timestamp" falls outside the years 0000 to 9999'],
      [{ timestamp: "9999-12-31T23:00:00-05:00" }, '"timestamp" falls outside the years 0000 to 9999'],
      [
        { timestamp: "0000-01-01T00:00:00Z", sentAt: "9999-12-31T00:00:00Z" },
        '"timestamp" corrected for clock skew (receivedAt − (sentAt − timestamp)) falls outside the years 0000 to 9999',
      ],
      [
        { originalTimestamp: "9999-12-31T00:00:00Z", sentAt: "0000-01-01T00:00:00Z" },
        '"timestamp" corrected for clock skew (receivedAt − (sentAt − originalTimestamp)) falls outside the years 0000 to 9999',
      ],
      [{ timestamp: 1735689600000 }, '"timestamp" must be an ISO-8601 timestamp'],
    ];
    const good = [
      { timestamp: "0000-01-01T00:00:00Z" },
      { timestamp: "9999-12-31T23:59:59.999Z" },
      { timestamp: "2024-02-29T12:00:00+14:00" },
    ];
    const events = [...bad.map(([x]) => track(x)), ...good.map((x) => track(x))];
    const r = await answer(await post("/v1/events", JSON.stringify(events)));
    expect(r.status).toBe(200);
    expect(r.body.accepted).toBe(good.length);
    expect(r.body.rejected).toEqual(
      bad.map(([, error], index) => ({ index, messageId: events[index]!.messageId, error })),
    );
    events.slice(0, bad.length).forEach((e) => neverStored.add(e.messageId as string));
    const kept = events.slice(bad.length);
    kept.forEach((e) => storedOnce.add(e.messageId as string));
    const stored = new Map((await storedEvents(node.bus, "hostile")).map((e) => [e.messageId, e]));
    expect(kept.map((e) => stored.get(e.messageId)!.timestamp)).toEqual([
      "0000-01-01T00:00:00.000Z",
      "9999-12-31T23:59:59.999Z",
      "2024-02-28T22:00:00.000Z",
    ]);
    await unharmed();
  }, 60_000);
});

describe("strings and keys", () => {
  test("lone surrogates (valid JSON escapes, not valid Unicode) are kept exactly, stored as escapes: the stream holds valid UTF-8", async () => {
    const e = track();
    const body = JSON.stringify([{ ...e, event: "E", properties: { s: "" } }])
      .replace('"event":"E"', '"event":"\\ud800x"')
      .replace('"s":""', '"s":"\\udfff\\ud83d\\ude00"');
    expect(await answer(await post("/v1/events", body))).toEqual({ status: 200, body: { accepted: 1 } });
    storedOnce.add(e.messageId);
    const stored = (await storedEvents(node.bus, "hostile")).find((x) => x.messageId === e.messageId)!;
    expect(stored.event).toBe("\ud800x");
    expect(stored.properties.s).toBe("\udfff😀");
    // The raw message: strict UTF-8, with the lone surrogates as \u escapes.
    const msg = await lastRawMessage("hostile", e.messageId);
    const text = new TextDecoder("utf-8", { fatal: true }).decode(msg);
    expect(text).toContain("\\ud800x");
    expect(text).not.toContain("\ufffd");
    await unharmed();
  }, 60_000);

  test("prototype-pollution keys are stored as plain keys and never reach Object.prototype", async () => {
    const e = track(),
      b = track();
    const poison = '{"polluted":"yes","toString":1}';
    const one = JSON.stringify({ ...e, properties: { x: 1 }, context: { x: 1 } })
      .replace('"properties":{"x":1}', `"properties":{"__proto__":${poison},"constructor":{"prototype":${poison}}}`)
      .replace('"context":{"x":1}', `"context":{"__proto__":${poison},"traits":{"__proto__":${poison}}}`)
      .replace(/^\{/, `{"__proto__":${poison},"constructor":{"prototype":${poison}},`);
    expect(await answer(await post("/v1/events", one))).toEqual({ status: 200, body: { accepted: 1 } });
    // The batch envelope's context is merged into each event's: the merge must not follow __proto__ either.
    const batch = JSON.stringify({ batch: [{ ...b, context: { x: 1 } }], context: { x: 1 } })
      .replace('"context":{"x":1}}]', `"context":{"__proto__":${poison}}}]`)
      .replace(/"context":\{"x":1\}\}$/, `"context":{"__proto__":${poison},"consents":{"__proto__":true}}}`);
    expect(await answer(await post("/v1/batch", batch))).toEqual({ status: 200, body: { accepted: 1 } });
    storedOnce.add(e.messageId).add(b.messageId);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.hasOwn(Object.prototype, "polluted")).toBe(false);
    expect(typeof ({} as { toString: unknown }).toString).toBe("function");
    const stored = new Map((await storedEvents(node.bus, "hostile")).map((x) => [x.messageId, x]));
    const se = stored.get(e.messageId)!,
      sb = stored.get(b.messageId)!;
    const own = (o: object, k: string) => Object.getOwnPropertyDescriptor(o, k)?.value;
    expect(own(se, "__proto__")).toEqual({ polluted: "yes", toString: 1 });
    expect(own(se.properties, "__proto__")).toEqual({ polluted: "yes", toString: 1 });
    expect(own(se, "constructor")).toEqual({ prototype: { polluted: "yes", toString: 1 } });
    expect(own(se.context, "__proto__")).toEqual({ polluted: "yes", toString: 1 });
    expect(own(sb.context, "__proto__")).toEqual({ polluted: "yes", toString: 1 });
    expect(own(sb.context.consents, "__proto__")).toBe(true);
    await unharmed();
  }, 60_000);
});

describe("the connection", () => {
  // Headers trickled a line at a time: the server's own header timeout (about 10 s) cuts them off.
  // Started first so the wait overlaps the other cases; checked in the header-flood test.
  let headerTrickle: ReturnType<typeof rawHttp>["done"];

  test("slow loris: declared 16 MiB then stalled, or trickled a byte at a time → 503 at the body deadline; meanwhile other clients are served and the stalled ones hold almost no memory", async () => {
    headerTrickle = rawHttp("POST /v1/events HTTP/1.1\r\nHost: localhost\r\n", {
      trickle: { bytes: "X-Slow: 1\r\n", everyMs: 500 },
    }).done;
    const clients = [
      ...Array.from({ length: 6 }, () => rawHttp(head(16 * 1024 * 1024))),
      rawHttp(head(100_000), { body: "[", trickle: { bytes: " ", everyMs: 200 } }),
      rawHttp(head("chunked"), { body: "1\r\n[\r\n", trickle: { bytes: "1\r\n \r\n", everyMs: 200 } }),
      rawHttp(head(100), { body: '{"type":"track"' }),
    ];
    let cut = 0;
    for (const c of clients) void c.done.then(() => cut++);
    // Wait until the node holds all nine (a condition, not a fixed time).
    // Summed over every thread answering HTTP (the kernel spreads the connections between them).
    const held = () => node.ingestCounts();
    for (
      const deadline = Date.now() + 30_000;
      (await held()).inFlightRequests < clients.length && Date.now() < deadline;
    )
      await Bun.sleep(10);
    expect((await held()).inFlightRequests).toBe(clients.length);
    // Reserved as bytes arrive: nine stalled requests hold at most 64 KiB each, not 6 × 16 MiB.
    expect((await held()).inFlightBytes).toBeLessThanOrEqual(9 * 64 * 1024);
    // Meanwhile, other clients are served: answered while the stalled ones are still held.
    let slowest = 0;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const e = track();
      expect((await answer(await post("/v1/events", JSON.stringify(e)))).status).toBe(200);
      slowest = Math.max(slowest, performance.now() - t0);
      storedOnce.add(e.messageId);
    }
    expect(cut).toBe(0);
    for (const c of clients) {
      const { response, closedAfterMs } = await c.done;
      expect(response).toStartWith("HTTP/1.1 503 ");
      expect(response).toContain(`{"error":"request body not received within ${BODY_TIMEOUT_MS / 1000} s"}`);
      // Cut at the deadline: not before it, and not later than it by more than 1 s plus 10× the
      // slowest normal request of this test (how slow the machine is right now).
      expect(closedAfterMs).toBeGreaterThanOrEqual(BODY_TIMEOUT_MS - 50);
      expect(closedAfterMs).toBeLessThan(BODY_TIMEOUT_MS + 1000 + 10 * slowest);
    }
    expect((await held()).inFlightBytes).toBe(0);
    expect((await held()).inFlightRequests).toBe(0);
    await unharmed();
  }, 60_000);

  test("slow loris on a raw webhook: the same deadline", async () => {
    const { done } = rawHttp(
      `POST /v1/webhooks/rawhook HTTP/1.1\r\nHost: localhost\r\nX-Token: ${RAW_SECRET}\r\nContent-Length: 500000\r\n\r\n`,
      { body: "{" },
    );
    const { response } = await done;
    expect(response).toStartWith("HTTP/1.1 503 ");
    await unharmed();
  }, 60_000);

  test("header floods: 10,000 headers or one 1 MiB header → 431 from the server; headers trickled forever are cut off; the node is unharmed", async () => {
    const many: Record<string, string> = {};
    for (let i = 0; i < 10_000; i++) many[`x-flood-${i}`] = "v";
    expect((await post("/v1/events", JSON.stringify(track()), many)).status).toBe(431);
    expect((await post("/v1/events", JSON.stringify(track()), { "X-Big": "a".repeat(1024 * 1024) })).status).toBe(431);
    expect(
      (await post("/v1/events", JSON.stringify(track()), { Authorization: `Bearer ${"k".repeat(1024 * 1024)}` }))
        .status,
    ).toBe(431);
    const { response, closedAfterMs } = await headerTrickle;
    expect(response).toBe("");
    expect(closedAfterMs).toBeLessThan(20_000);
    await unharmed();
  }, 30_000);

  test("a gzip bomb (10 MB inflating to 10 GiB) → 413 quickly, with memory bounded", async () => {
    // Full-flush deflate blocks are byte-aligned and identical: repeating one makes a valid stream cheaply.
    const block = deflateRawSync(Buffer.alloc(1024 * 1024), { finishFlush: constants.Z_FULL_FLUSH, level: 9 });
    const bomb = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]),
      ...Array<Buffer>(10_240).fill(block),
    ]);
    expect(bomb.length).toBeLessThan(11_000_000);
    Bun.gc(true);
    const before = process.memoryUsage().rss;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 2);
    // Quickly: the node inflates up to its 16 MiB limit and stops; 10× what inflating 16 MiB of it takes here, plus 2 s.
    const inflate16 = timeOf(() =>
      inflateRawSync(Buffer.concat(Array<Buffer>(16).fill(block)), { finishFlush: constants.Z_SYNC_FLUSH }),
    );
    const t0 = performance.now();
    const r = await answer(
      await post("/v1/batch", bomb, {
        "Content-Encoding": "gzip",
        "Content-Type": "application/x-www-form-urlencoded",
      }),
    );
    clearInterval(sampler);
    expect(r).toEqual({ status: 413, body: { error: "request body exceeds 16777216 bytes" } });
    expect(performance.now() - t0).toBeLessThan(2000 + 10 * inflate16);
    // The node shares this process; the 10 MB bomb itself is in memory twice (here and in the request).
    expect(peak - before).toBeLessThan(128 * 1024 * 1024);
    await unharmed();
  }, 60_000);
});

describe("credentials", () => {
  const ingestPaths = [
    "/v1/events",
    "/v1/batch",
    "/v1/track",
    "/v1/identify",
    "/v1/page",
    "/v1/screen",
    "/v1/group",
    "/v1/alias",
  ];
  // Every route but ingestion, webhooks, preflights, the debugger's page shell and the public probes is an admin route.
  const PUBLIC =
    /^\/(v1\/(events|batch|track|identify|page|screen|group|alias|[tipsgab]|webhooks\/.*|projects\/[^/]+\/settings)|beacon\/v1\/batch|sourceConfig\/?|debugger(\/.*)?|healthz|readyz|version|openapi\.json)$/;
  const adminRoutes = () =>
    node.routes
      .filter((r) => r.method !== "OPTIONS" && !PUBLIC.test(r.path))
      .map((r) => ({ method: r.method, path: r.path.replace(/:[a-zA-Z]+/g, "x") }));

  test("the admin token and a raw connection's secret never ingest: 401 on every endpoint, however sent, with the unknown-key body", async () => {
    const unknown = await answer(
      await post("/v1/events", JSON.stringify(track()), { Authorization: "Bearer not-a-key-at-all" }),
    );
    expect(unknown.status).toBe(401);
    for (const secret of [ADMIN, RAW_SECRET]) {
      for (const path of ingestPaths) {
        const e = track();
        const ways: [Record<string, string>, unknown][] = [
          [{ Authorization: `Bearer ${secret}` }, e],
          [{ Authorization: `Basic ${btoa(`${secret}:`)}` }, e],
          [{}, path === "/v1/batch" ? { batch: [e], writeKey: secret } : { ...e, writeKey: secret }],
        ];
        for (const [headers, body] of ways) {
          const r = await answer(
            await fetch(`${node.url}${path}`, {
              method: "POST",
              headers,
              body: JSON.stringify(path === "/v1/batch" && !("batch" in (body as object)) ? { batch: [body] } : body),
            }),
          );
          expect([path, r]).toEqual([path, unknown]);
        }
        neverStored.add(e.messageId);
      }
    }
  }, 60_000);

  test("write keys and raw secrets never open admin routes; write keys and the admin token never pass a raw webhook's check", async () => {
    const routes = adminRoutes();
    expect(routes.length).toBeGreaterThanOrEqual(5);
    for (const { method, path } of routes) {
      for (const token of [KEY, RAW_SECRET]) {
        const r = await fetch(`${node.url}${path}`, {
          method,
          headers: { Authorization: `Bearer ${token}` },
          ...(method === "POST" && { body: "{}" }),
        });
        expect([method, path, r.status]).toEqual([method, path, 401]);
        bodies.push(await r.text());
      }
    }
    for (const token of [KEY, ADMIN]) {
      for (const headers of [{ "X-Token": token }, { Authorization: `Bearer ${token}` }] as Record<string, string>[]) {
        const r = await answer(
          await fetch(`${node.url}/v1/webhooks/rawhook`, { method: "POST", headers, body: '{"id":1}' }),
        );
        expect(r.status).toBe(401);
      }
    }
  }, 60_000);

  test("a raw webhook's shared-secret header is never stored, so neither the stream nor the debugger shows it", async () => {
    const ac = new AbortController();
    const live = await fetch(`${node.url}/v1/connections/rawhook/events/live`, {
      headers: { Authorization: `Bearer ${ADMIN}` },
      signal: ac.signal,
    });
    expect(live.status).toBe(200);
    const r = await answer(
      await fetch(`${node.url}/v1/webhooks/rawhook`, {
        method: "POST",
        headers: { "X-Token": RAW_SECRET, "X-Other": "kept" },
        body: '{"id":"secret-check"}',
      }),
    );
    expect(r.status).toBe(200);
    const records = await storedEvents(node.bus, "rawhook");
    expect(records.length).toBeGreaterThan(0);
    const record = records.at(-1)!;
    expect(record.raw.headers["x-other"]).toBe("kept");
    expect(record.raw.headers["x-token"]).toBeUndefined();
    expect(JSON.stringify(records)).not.toContain(RAW_SECRET);
    // The debugger's live view of the connection.
    let seen = "";
    const reader = live.body!.getReader();
    const until = Date.now() + 1500;
    while (Date.now() < until && !seen.includes("secret-check")) {
      const next = await Promise.race([reader.read(), Bun.sleep(until - Date.now()).then(() => undefined)]);
      if (!next || next.done) break;
      seen += new TextDecoder().decode(next.value);
    }
    ac.abort();
    expect(seen).toContain("secret-check");
    expect(seen).not.toContain(RAW_SECRET);
  }, 60_000);

  test("no write key, admin token or secret appears in any answer or any log line of this file", async () => {
    // A near-miss of each, too: errors must not echo what was sent.
    for (const near of [KEY.slice(0, -1) + "X", ADMIN.slice(0, -1) + "X"]) {
      bodies.push(
        await (await post("/v1/events", JSON.stringify(track()), { Authorization: `Bearer ${near}` })).text(),
      );
      bodies.push(
        await (await fetch(`${node.url}/v1/pipelines`, { headers: { Authorization: `Bearer ${near}` } })).text(),
      );
    }
    bodies.push(
      await (
        await fetch(`${node.url}/v1/webhooks/rawhook`, {
          method: "POST",
          headers: { "X-Token": RAW_SECRET.slice(0, -1) + "X" },
          body: "{}",
        })
      ).text(),
    );
    expect(bodies.length).toBeGreaterThan(50);
    expect(logs.length).toBeGreaterThan(0);
    for (const secret of [KEY, ADMIN, RAW_SECRET, KEY.slice(0, -1), ADMIN.slice(0, -1), RAW_SECRET.slice(0, -1)]) {
      expect(bodies.filter((b) => b.includes(secret))).toEqual([]);
      expect(logs.filter((l) => l.includes(secret))).toEqual([]);
    }
  }, 60_000);
});

describe("property: arbitrary bodies over HTTP", () => {
  test(
    "property: any body → 200, 400 or 413 (never 5xx, never a hang); a 200 lists each invalid event; accepted events are stored exactly once",
    async () => {
      const paths = ["/v1/events", "/v1/batch", "/v1/track", "/v1/identify"];
      const accepted = new Set<string>(),
        refused = new Set<string>();
      let run = 0;
      await fc.assert(
        fc.asyncProperty(
          bodyish,
          fc.constantFrom(...paths),
          fc.constantFrom("identity", "gzip"),
          fc.constantFrom("application/json", "text/plain", "application/x-www-form-urlencoded"),
          async (value, path, encoding, type) => {
            const r = run++;
            // Events that carry a string messageId get a unique one, so the stream can be checked for them.
            const ids: (string | undefined)[] = [];
            const tag = (e: unknown, i: number) => {
              if (
                e &&
                typeof e === "object" &&
                !Array.isArray(e) &&
                typeof (e as { messageId?: unknown }).messageId === "string"
              ) {
                const id = `fz-${r}-${i}`;
                ids[i] = id;
                return { ...e, messageId: id };
              }
              return e;
            };
            let body = value;
            if (Array.isArray(value) && path === "/v1/events") body = value.map(tag);
            else if (
              path === "/v1/batch" &&
              value &&
              typeof value === "object" &&
              Array.isArray((value as { batch?: unknown }).batch)
            )
              body = { ...value, batch: (value as { batch: unknown[] }).batch.map(tag) };
            const text = hostileJson(body);
            const t0 = performance.now();
            const res = await post(path, encoding === "gzip" ? gzipSync(text) : text, {
              "Content-Type": type,
              ...(encoding === "gzip" && { "Content-Encoding": "gzip" }),
            });
            const a = await answer(res);
            expect(performance.now() - t0).toBeLessThan(5000);
            expect([200, 400, 413]).toContain(a.status);
            expect(typeof a.body).toBe("object");
            const events =
              path === "/v1/events"
                ? Array.isArray(body)
                  ? body
                  : [body]
                : path === "/v1/batch"
                  ? ((body as { batch?: unknown[] })?.batch ?? [])
                  : [body];
            if (a.status === 200) {
              const rejected = (a.body.rejected ?? []) as { index: number; error: string }[];
              expect(a.body.accepted + rejected.length).toBe(events.length);
              for (const x of rejected) expect(x.error).toMatch(/"[^"]+"|event/);
              const bad = new Set(rejected.map((x) => x.index));
              ids.forEach((id, i) => id && (bad.has(i) ? refused : accepted).add(id));
            } else {
              expect(typeof a.body.error).toBe("string");
              ids.forEach((id) => id && refused.add(id));
            }
          },
        ),
        params(100),
      );
      const counts = new Map<string, number>();
      for (const e of await storedEvents(node.bus, "hostile"))
        if (typeof e.messageId === "string" && e.messageId.startsWith("fz-"))
          counts.set(e.messageId, (counts.get(e.messageId) ?? 0) + 1);
      expect([...accepted].filter((id) => counts.get(id) !== 1)).toEqual([]);
      expect([...refused].filter((id) => counts.has(id))).toEqual([]);
      await unharmed();
    },
    fuzzTimeout,
  );
});

test("every event answered 2xx is stored exactly once; nothing of a refused request or a rejected event is stored", async () => {
  const counts = new Map<string, number>();
  for (const e of await storedEvents(node.bus, "hostile")) counts.set(e.messageId, (counts.get(e.messageId) ?? 0) + 1);
  const missingOrTwice = [...storedOnce].filter((id) => counts.get(id) !== 1);
  const leaked = [...neverStored].filter((id) => !storedOnce.has(id) && counts.has(id));
  expect(missingOrTwice).toEqual([]);
  expect(leaked).toEqual([]);
  expect(storedOnce.size).toBeGreaterThan(0);
});

/** The raw bytes of the JetStream message holding `messageId` on `connection`. */
async function lastRawMessage(connection: string, messageId: string): Promise<Uint8Array> {
  const { DeliverPolicy } = await import("@nats-io/jetstream");
  const { STREAM, connectionSubjects } = await import("../../src/bus/subjects.ts");
  const c = await node.bus.js.consumers.get(STREAM, {
    filter_subjects: connectionSubjects(connection),
    deliver_policy: DeliverPolicy.All,
  });
  const info = await c.info();
  const total = info.num_pending;
  const messages = await c.consume();
  let seen = 0;
  let found: Uint8Array | undefined;
  for await (const m of messages) {
    if (new TextDecoder().decode(m.data).includes(messageId)) found = m.data;
    if (++seen >= total) break;
  }
  messages.stop();
  if (!found) throw new Error(`no message holds ${messageId}`);
  return found;
}
