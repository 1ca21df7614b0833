import { describe, expect, test } from "bun:test";
import { startTestNode } from "../harness/services.ts";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/** The operator's side: admin auth on every route, SSE with resume, pipeline counts, metrics, outcomes. */

const ADMIN = "admin-token-0123456789";
const KEY = "key-admin-site-0001";
const files = {
  "site.yaml": `connection: site
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: all
    import: events
  - name: identifies
    import: events
    filter: type = "identify"
`,
};

// One thread answering HTTP: the log test reads the lines this thread writes to stderr (the admin
// API through other threads is test/integration/ingest-workers.test.ts's).
const stack = useStack(files, { adminToken: ADMIN, ingestWorkers: 1 });

const admin = (path: string, token: string = ADMIN, headers: Record<string, string> = {}) =>
  fetch(`${stack.node.url}${path}`, { headers: { ...(token && { Authorization: `Bearer ${token}` }), ...headers } });
const post = (events: unknown[], token = KEY) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
    body: JSON.stringify({ batch: events }),
  }).then((r) => r.status);

/** Reads SSE messages until `count` data messages arrived (or the timeout), then disconnects. */
async function sse(path: string, count: number, headers: Record<string, string> = {}, timeoutMs = 5000) {
  const ac = new AbortController();
  const r = await fetch(`${stack.node.url}${path}`, {
    headers: { Authorization: `Bearer ${ADMIN}`, ...headers },
    signal: ac.signal,
  });
  expect(r.status).toBe(200);
  expect(r.headers.get("content-type")).toContain("text/event-stream");
  const reader = r.body!.getReader();
  const out: { id?: string; event?: string; data: any }[] = [];
  let buf = "";
  const deadline = setTimeout(() => ac.abort(), timeoutMs);
  try {
    while (out.filter((m) => !m.event).length < count) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += new TextDecoder().decode(value);
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const m: { id?: string; event?: string; data: any } = { data: undefined };
        for (const line of block.split("\n")) {
          if (line.startsWith("id: ")) m.id = line.slice(4);
          else if (line.startsWith("event: ")) m.event = line.slice(7);
          else if (line.startsWith("data: ")) m.data = JSON.parse(line.slice(6));
        }
        if (m.data !== undefined) out.push(m);
      }
    }
  } catch {
    // aborted at the deadline: return what arrived
  } finally {
    clearTimeout(deadline);
    ac.abort();
  }
  return out;
}

describe("auth", () => {
  const routes = [
    "/v1/connections",
    "/v1/pipelines",
    "/metrics",
    "/v1/connections/site/events/live",
    "/v1/connections/site/events/x",
  ];
  test("every admin route needs the admin token; write keys never open them", async () => {
    for (const path of routes) {
      expect([path, (await admin(path, "")).status]).toEqual([path, 401]);
      expect([path, (await admin(path, KEY)).status]).toEqual([path, 401]);
      expect([path, (await admin(path, ADMIN + "x")).status]).toEqual([path, 401]);
      const ok = await admin(path);
      expect([path, ok.status]).toEqual([path, 200]);
      await ok.body?.cancel();
    }
    // The page shell holds no data; it is the one thing served without the token.
    expect((await admin("/debugger", "")).status).toBe(200);
  });

  test("the admin token never ingests", async () => {
    expect(await post([{ type: "track", event: "E", userId: "u" }], ADMIN)).toBe(401);
  });

  test("without TRIBUTARY_ADMIN_TOKEN the admin API is off, except on loopback with the development flag", async () => {
    const off = await startTestNode(stack.nats.url, files);
    const dev = await startTestNode(stack.nats.url, files, { devAdmin: true });
    try {
      expect((await fetch(`${off.url}/v1/pipelines`, { headers: { Authorization: `Bearer ${ADMIN}` } })).status).toBe(
        403,
      );
      expect((await fetch(`${dev.url}/v1/pipelines`)).status).toBe(200);
    } finally {
      await Promise.all([off.stop(), dev.stop()]);
    }
  });
});

test("SSE: the last events, then live ones; Last-Event-ID resumes without gaps", async () => {
  const ids = (p: string, n: number) => Array.from({ length: n }, (_, i) => `${p}-${i}`);
  expect(await post(ids("sse-a", 5).map((messageId) => ({ type: "track", event: "A", userId: "u", messageId })))).toBe(
    200,
  );
  await Bun.sleep(200);
  const first = await sse("/v1/connections/site/events/live", 5);
  // Events of one request spread over the connection's shard subjects: compare as sets.
  expect(first.map((m) => m.data.messageId).sort()).toEqual(ids("sse-a", 5));
  const last = first.at(-1)!.id!;
  expect(await post(ids("sse-b", 3).map((messageId) => ({ type: "track", event: "B", userId: "u", messageId })))).toBe(
    200,
  );
  await Bun.sleep(200);
  const resumed = await sse("/v1/connections/site/events/live", 3, { "Last-Event-ID": last });
  expect(resumed.map((m) => m.data.messageId).sort()).toEqual(ids("sse-b", 3));
  // Live: an event posted while connected arrives.
  const pending = sse("/v1/connections/site/events/live", 9);
  await Bun.sleep(300);
  expect(await post([{ type: "track", event: "C", userId: "u", messageId: "sse-live" }])).toBe(200);
  expect((await pending).map((m) => m.data.messageId)).toContain("sse-live");
});

test("GET /v1/pipelines counts match what ClickHouse holds; /metrics has them and the HTTP figures", async () => {
  expect(
    await post([
      { type: "identify", userId: "p1", messageId: "cnt-1", traits: { a: 1 } },
      { type: "track", event: "E", userId: "p1", messageId: "cnt-2" },
    ]),
  ).toBe(200);
  const inCh = async (p: string) =>
    Number((await rows<any>(stack.db, `SELECT count() AS c FROM tributary.events FINAL WHERE pipeline = '${p}'`))[0].c);
  await eventually<any>(
    stack.db,
    `SELECT count() AS c FROM tributary.events FINAL WHERE message_id = 'cnt-2'`,
    (r) => r[0]?.c === "1",
  );
  let pipelines: any[] = [];
  // Both pipelines' counts settle once their inserts are confirmed: poll for both, generously.
  const settled = async (name: string) => {
    const x = pipelines.find((p) => p.pipeline === name);
    return !!x && x.loaded === (await inCh(name)) && x.lag === 0;
  };
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await Bun.sleep(100)) {
    pipelines = (await (await admin("/v1/pipelines")).json()).pipelines;
    if ((await settled("all")) && (await settled("identifies"))) break;
  }
  const all = pipelines.find((p) => p.pipeline === "all");
  const identifies = pipelines.find((p) => p.pipeline === "identifies");
  expect(all.loaded).toBe(await inCh("all"));
  expect(identifies.loaded).toBe(await inCh("identifies"));
  expect(identifies.received).toBe(all.received);
  expect(identifies.filteredOut).toBe(all.received - identifies.loaded);
  expect(all).toMatchObject({ connection: "site", import: "events", failed: 0, lag: 0 });
  expect(typeof all.lastLoadAt).toBe("string");

  const metrics = await (await admin("/metrics")).text();
  expect(metrics).toContain(`tributary_pipeline_events{connection="site",pipeline="all",stage="loaded"} ${all.loaded}`);
  expect(metrics).toMatch(/tributary_http_requests_total\{route="\/v1\/batch",status="200"\} \d+/);
  expect(metrics).toContain("tributary_jetstream_publish_duration_seconds_bucket");
  expect(metrics).toContain('tributary_sink_batch_rows_bucket{le="1",table="events"}');
  expect(metrics).toMatch(/tributary_pipeline_consumer_lag\{connection="site",pipeline="all"\} 0/);
});

test("an event's detail: its JSON and what each pipeline did with it", async () => {
  expect(await post([{ type: "track", event: "Detail", userId: "d1", messageId: "detail-1" }])).toBe(200);
  let body: any;
  for (let i = 0; i < 50; i++) {
    body = await (await admin("/v1/connections/site/events/detail-1")).json();
    if (body.outcomes.some((o: any) => o.outcome === "loaded")) break;
    await Bun.sleep(100);
  }
  expect(body.event).toMatchObject({ type: "track", event: "Detail", userId: "d1", messageId: "detail-1" });
  const by = (p: string) => body.outcomes.filter((o: any) => o.pipeline === p).map((o: any) => o.outcome);
  expect(by("all")).toEqual(["kept", "loaded"]);
  expect(by("identifies")).toEqual(["filtered"]);
  expect(body.outcomes.find((o: any) => o.pipeline === "identifies").reason).toContain(`type = "identify"`);
});

test("logs are JSON lines with request ids, and never hold write keys, tokens or event bodies", async () => {
  const { setLogLevel } = await import("../../src/util/log.ts");
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => (
    lines.push(String(chunk)), true
  )) as typeof process.stderr.write;
  setLogLevel("debug");
  let requestId: string | null = null;
  try {
    const r = await fetch(`${stack.node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}`, "X-Request-Id": "req-abc-123" },
      body: JSON.stringify({
        batch: [
          {
            type: "track",
            event: "Secret Event Name",
            userId: "secret-user",
            properties: { card: "4111111111111111" },
          },
        ],
      }),
    });
    requestId = r.headers.get("x-request-id");
    await fetch(`${stack.node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: "Bearer wrong-key-0123456789" },
      body: "{}",
    });
    await admin("/v1/pipelines");
    await Bun.sleep(50);
  } finally {
    setLogLevel("warn");
    process.stderr.write = write;
  }
  expect(requestId).toBe("req-abc-123");
  const records = lines
    .join("")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  expect(records.some((r) => r.requestId === "req-abc-123" && r.route === "/v1/batch" && r.status === 200)).toBe(true);
  const text = lines.join("");
  for (const secret of [KEY, ADMIN, "wrong-key-0123456789", "4111111111111111", "Secret Event Name", "secret-user"])
    expect(text).not.toContain(secret);
});

test("GET /version names the release, without auth", async () => {
  const r = await fetch(`${stack.node.url}/version`);
  expect(r.status).toBe(200);
  const pkg = await Bun.file(new URL("../../package.json", import.meta.url)).json();
  expect(await r.json()).toEqual({ name: "tributary", version: pkg.version, bun: Bun.version });
});
