import { expect, test } from "bun:test";
import { createHmac } from "node:crypto";
import { gzipSync } from "node:zlib";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/**
 * Raw signed webhooks end to end: bodies signed here the way GitHub, Stripe and Segment document
 * it, through the node, into their ClickHouse tables.
 */

const GH_SECRET = "gh-secret-0123456789";
const STRIPE_SECRETS = ["whsec_old_0123456789", "whsec_new_0123456789"];
const SEGMENT_SECRET = "seg-shared-secret";

const files = {
  "github.yaml": `connection: github
source: raw
body: json
headers: all
check: github
secret: "${GH_SECRET}"
dedup: {header: X-GitHub-Delivery}
table: github_events
`,
  "stripe.yaml": `connection: stripe
source: raw
check: stripe
secret: ${JSON.stringify(STRIPE_SECRETS)}
dedup: {jsonata: id}
headers: [Stripe-Signature]
events: 'type = "invoice.paid" ? {"type": "track", "event": "Invoice Paid", "userId": data.object.customer, "properties": {"amount": data.object.amount_paid}, "timestamp": $fromMillis(created * 1000)}'
pipelines:
  - name: tracks
    import: events
`,
  "segment-wh.yaml": `connection: segment-wh
source: raw
body: json-array
check: segment
secret: "${SEGMENT_SECRET}"
segmentBatchFallback: true
`,
  "open.yaml": `connection: open
source: raw
body: json-array
insecure: true
headers: [X-Source]
`,
  "lines.yaml": `connection: lines
source: raw
body: json
insecure: true
table: lines_raw
`,
};

const stack = useStack(files, {});

const hook = (connection: string, body: string | Buffer, headers: Record<string, string> = {}) =>
  fetch(`${stack.node.url}/v1/webhooks/${connection}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: body as BodyInit,
  });

test("GitHub: X-Hub-Signature-256 over the raw bytes; redelivery stored once; tampering, wrong secret and missing header get 401", async () => {
  const body = JSON.stringify({ action: "opened", number: 7, repository: { full_name: "acme/app" } }, null, 2);
  const sign = (b: string, secret = GH_SECRET) => "sha256=" + createHmac("sha256", secret).update(b).digest("hex");
  const headers = {
    "X-GitHub-Event": "pull_request",
    "X-GitHub-Delivery": "d-1",
    "X-Hub-Signature-256": sign(body),
    Authorization: "token not-to-be-stored",
    Cookie: "c=1",
  };
  const first = await hook("github", body, headers);
  expect(first.status).toBe(200);
  expect(await first.json()).toMatchObject({ accepted: 1, rows: 1 });
  const again = await hook("github", body, headers);
  expect(again.status).toBe(200);
  expect(await again.json()).toMatchObject({ accepted: 0, duplicate: true });

  expect((await hook("github", body.replace("opened", "closed"), headers)).status).toBe(401);
  expect(
    (
      await hook("github", body, {
        ...headers,
        "X-GitHub-Delivery": "d-2",
        "X-Hub-Signature-256": sign(body, "wrong-secret"),
      })
    ).status,
  ).toBe(401);
  const { "X-Hub-Signature-256": _, ...unsigned } = headers;
  const missing = await hook("github", body, { ...unsigned, "X-GitHub-Delivery": "d-3" });
  expect(missing.status).toBe(401);
  expect((await missing.json()).error).toContain("X-Hub-Signature-256");

  const got = await eventually<any>(stack.db, `SELECT * FROM tributary.github_events FINAL`, (r) => r.length >= 1);
  await Bun.sleep(300);
  expect(await rows(stack.db, `SELECT count() AS c FROM tributary.github_events FINAL`)).toEqual([{ c: "1" }]);
  expect(got[0].connection).toBe("github");
  expect(got[0].body).toBe(body); // exactly as sent, whitespace included
  const h = JSON.parse(got[0].headers);
  expect(h["x-github-event"]).toBe("pull_request");
  expect(h["x-github-delivery"]).toBe("d-1");
  expect(h).not.toHaveProperty("authorization");
  expect(h).not.toHaveProperty("cookie");
});

test("Stripe: t=…,v1=… with rotation and a replay window; events: turns invoice.paid into a track event", async () => {
  const created = Math.floor(Date.now() / 1000);
  const payload = JSON.stringify({
    id: "evt_1",
    type: "invoice.paid",
    created,
    data: { object: { customer: "cus_9", amount_paid: 4200 } },
  });
  const sign = (b: string, t: number, secret: string) =>
    `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${b}`).digest("hex")}`;
  // Signed with the new secret of a rotation: any of the configured secrets is accepted.
  const ok = await hook("stripe", payload, { "Stripe-Signature": sign(payload, created, STRIPE_SECRETS[1]!) });
  expect(ok.status).toBe(200);
  expect(await ok.json()).toMatchObject({ accepted: 1, events: { accepted: 1 } });
  // A captured request replayed later: its signature is right, its timestamp too old.
  const old = created - 3600;
  const replay = await hook("stripe", payload, { "Stripe-Signature": sign(payload, old, STRIPE_SECRETS[0]!) });
  expect(replay.status).toBe(401);
  expect((await hook("stripe", payload, { "Stripe-Signature": sign(payload, created, "whsec_wrong") })).status).toBe(
    401,
  );

  const raw = await eventually<any>(
    stack.db,
    `SELECT delivery_id, body, headers FROM tributary.stripe FINAL`,
    (r) => r.length === 1,
  );
  expect(raw[0].delivery_id).toBe("evt_1");
  expect(JSON.parse(raw[0].headers)).toHaveProperty("stripe-signature");
  const ev = await eventually<any>(
    stack.db,
    `SELECT type, event, user_id, properties, toUInt64(timestamp) AS ts FROM tributary.events FINAL WHERE connection = 'stripe'`,
    (r) => r.length === 1,
  );
  expect(ev[0]).toMatchObject({ type: "track", event: "Invoice Paid", user_id: "cus_9" });
  expect(JSON.parse(ev[0].properties)).toEqual({ amount: 4200 });
  expect(Number(ev[0].ts)).toBe(created * 1000);
});

test("Segment: a batched request signed on its first event's JSON is accepted, one row per element", async () => {
  const events = [
    { type: "track", event: "A", userId: "u1", messageId: "s-1" },
    { type: "track", event: "B", userId: "u1", messageId: "s-2" },
  ];
  const signature = createHmac("sha1", SEGMENT_SECRET).update(JSON.stringify(events[0])).digest("hex");
  const r = await hook("segment-wh", JSON.stringify(events), { "X-Signature": signature });
  expect(r.status).toBe(200);
  const single = JSON.stringify([events[0]]);
  expect(
    (
      await hook("segment-wh", single, {
        "X-Signature": createHmac("sha1", "wrong").update(JSON.stringify(events[0])).digest("hex"),
      })
    ).status,
  ).toBe(401);
  const got = await eventually<any>(
    stack.db,
    `SELECT row_index, body FROM tributary.\`segment-wh\` FINAL ORDER BY row_index`,
    (x) => x.length === 2,
  );
  expect(got.map((x) => JSON.parse(x.body).event)).toEqual(["A", "B"]);
});

test("json-array: one row per element; a body that is not an array, or broken JSON, is 400 and stores nothing", async () => {
  const good = await hook("open", JSON.stringify([{ n: 1 }, { n: 2 }, { n: 3 }]), {
    "X-Source": "test",
    "X-Other": "dropped",
  });
  expect(good.status).toBe(200);
  const notArray = await hook("open", JSON.stringify({ n: 4 }));
  expect(notArray.status).toBe(400);
  expect((await notArray.json()).error).toContain("expected a JSON array");
  const broken = await hook("open", `[{"n": 5}, {"n": ]`);
  expect(broken.status).toBe(400);
  expect((await broken.json()).error).toContain("invalid JSON");
  // gzip bodies are inflated before parsing (and before signature checks).
  expect((await hook("open", gzipSync(JSON.stringify([{ n: 6 }])), { "Content-Encoding": "gzip" })).status).toBe(200);
  const got = await eventually<any>(
    stack.db,
    `SELECT body, headers FROM tributary.open FINAL ORDER BY body`,
    (x) => x.length === 4,
    20_000,
  );
  await Bun.sleep(300);
  expect(
    (await rows<any>(stack.db, `SELECT body FROM tributary.open FINAL ORDER BY body`)).map((x) => JSON.parse(x.body).n),
  ).toEqual([1, 2, 3, 6]);
  expect(JSON.parse(got[0].headers)).toEqual({ "x-source": "test" });
});

test("json: newline-separated documents give one row each; unknown connections 404; too large 413", async () => {
  const r = await hook("lines", `{"a":1}\n{"a":2}\n\n{"a":3}\n`);
  expect(r.status).toBe(200);
  expect(await r.json()).toMatchObject({ rows: 3 });
  const bad = await hook("lines", `{"a":1}\n{"a":\n`);
  expect(bad.status).toBe(400);
  expect((await bad.json()).error).toContain("line 2");
  expect((await hook("nope", "{}")).status).toBe(404);
  expect((await hook("lines", JSON.stringify({ big: "x".repeat(2 * 1024 * 1024) }))).status).toBe(413);
  const got = await eventually<any>(
    stack.db,
    `SELECT body FROM tributary.lines_raw FINAL ORDER BY body`,
    (x) => x.length === 3,
  );
  expect(got.map((x) => x.body)).toEqual([`{"a":1}`, `{"a":2}`, `{"a":3}`]);
});
