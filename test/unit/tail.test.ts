import { expect, test } from "bun:test";
import { eventsOf, formatLine, makeSelector } from "../../scripts/tail.ts";
import { compileExpression } from "../../src/expr/index.ts";

/** `bun run tail`: the line it prints per event and how --filter / --pipeline select events. */

const track = {
  type: "track",
  event: "Signed Up",
  userId: "u-1",
  messageId: "m-1",
  receivedAt: "2024-05-01T12:34:56.789Z",
  properties: { plan: "pro" },
};

test("one compact line per event: time, type, name, user, messageId", () => {
  expect(formatLine(track, { utc: true })).toBe(
    `12:34:56.789  track     ${"Signed Up".padEnd(24)}  ${"u-1".padEnd(16)}  m-1`,
  );
  const page = formatLine(
    { type: "page", name: "Pricing", anonymousId: "a-9", messageId: "m-2", receivedAt: track.receivedAt },
    { utc: true },
  );
  expect(page.split(/\s{2,}/)).toEqual(["12:34:56.789", "page", "Pricing", "anon:a-9", "m-2"]);
  const identify = formatLine(
    { type: "identify", userId: "u-2", traits: { email: "a@b.c" }, messageId: "m-3", receivedAt: track.receivedAt },
    { utc: true },
  );
  expect(identify.split(/\s{2,}/)).toEqual(["12:34:56.789", "identify", "a@b.c", "u-2", "m-3"]);
});

test("raw webhook deliveries print differently", () => {
  const raw = {
    messageId: "d-1",
    raw: { receivedAt: track.receivedAt, headers: {}, rows: ['{"hello": "world"}', "{}"] },
  };
  expect(formatLine(raw, { utc: true }).split(/\s{2,}/)).toEqual([
    "12:34:56.789",
    "raw",
    '2 rows {"hello": "world"}',
    "-",
    "d-1",
  ]);
  expect(eventsOf(JSON.stringify(raw))).toEqual([raw]);
  expect(eventsOf(JSON.stringify([track, track]))).toHaveLength(2);
});

test("colour only when asked (a TTY), and nothing else changes", () => {
  const coloured = formatLine(track, { color: true, utc: true });
  expect(coloured).toContain("\x1b[");
  expect(coloured.replace(/\x1b\[\d+m/g, "")).toBe(formatLine(track, { utc: true }));
});

test("--filter and a pipeline's filter and consents select events", () => {
  const byFilter = makeSelector(compileExpression('properties.plan = "pro"'));
  expect(byFilter(track)).toBe(true);
  expect(byFilter({ ...track, properties: { plan: "free" } })).toBe(false);
  const byPipeline = makeSelector(undefined, { filter: compileExpression('type = "identify"') });
  expect(byPipeline(track)).toBe(false);
  expect(byPipeline({ type: "identify", userId: "u" })).toBe(true);
  const consents = makeSelector(undefined, { consents: ["analytics"] });
  expect(consents(track)).toBe(false);
  expect(consents({ ...track, context: { consents: { analytics: true } } })).toBe(true);
});

test("--raw: subjects are checked before subscribing; a message prints as subject, headers, payload", async () => {
  const { subjectProblem, rawMessage, formatRaw } = await import("../../scripts/tail.ts");
  for (const ok of ["tributary.events.>", "a.*.c", ">", "x"]) expect(subjectProblem(ok)).toBeUndefined();
  expect(subjectProblem("a.>.c")).toContain("last token");
  expect(subjectProblem("a..b")).toContain("empty token");
  expect(subjectProblem("a b")).toContain("not a NATS subject");
  const r = rawMessage({ subject: "s.1", reply: "", headers: undefined, data: new TextEncoder().encode("[1]") });
  expect(r).toEqual({ subject: "s.1", size: 3, payload: "[1]" });
  expect(formatRaw(r, 7, { utc: true, at: new Date("2024-05-01T12:34:56.789Z") })).toBe(
    "[#7]  12:34:56.789  s.1  3 bytes\n[1]\n",
  );
});

test("unknown names: the closest known one is suggested, a swap of two letters included", async () => {
  const { closest, unknownName } = await import("../../scripts/cli.ts");
  expect(closest("shpo", ["billing", "shop"])).toBe("shop");
  expect(closest("zzzz", ["billing", "shop"])).toBeUndefined();
  expect(closest("pipelin", ["pipeline", "filter", "json"])).toBe("pipeline");
  expect(unknownName("connection", "shpo", ["shop", "billing"], { where: "looked in ./pipelines" })).toBe(
    `no connection "shpo". Did you mean "shop"? Known connections: billing, shop (looked in ./pipelines).`,
  );
  expect(unknownName("pipeline", "x", [], { of: `of connection "a"` })).toBe(
    `no pipeline "x" of connection "a". No pipelines of connection "a" are known.`,
  );
});
