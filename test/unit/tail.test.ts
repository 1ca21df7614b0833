import { expect, test } from "bun:test";
import { eventsOf, formatLine, makeSelector } from "../../scripts/tail.ts";
import { compileExpression } from "../../src/pipeline/filter.ts";

/** `bun run tail`: the line it prints per event and how --filter / --pipeline select events. */

const track = { type: "track", event: "Signed Up", userId: "u-1", messageId: "m-1", receivedAt: "2024-05-01T12:34:56.789Z", properties: { plan: "pro" } };

test("one compact line per event: time, type, name, user, messageId", () => {
  expect(formatLine(track, { utc: true })).toBe(`12:34:56.789  track     ${"Signed Up".padEnd(24)}  ${"u-1".padEnd(16)}  m-1`);
  const page = formatLine({ type: "page", name: "Pricing", anonymousId: "a-9", messageId: "m-2", receivedAt: track.receivedAt }, { utc: true });
  expect(page.split(/\s{2,}/)).toEqual(["12:34:56.789", "page", "Pricing", "anon:a-9", "m-2"]);
  const identify = formatLine({ type: "identify", userId: "u-2", traits: { email: "a@b.c" }, messageId: "m-3", receivedAt: track.receivedAt }, { utc: true });
  expect(identify.split(/\s{2,}/)).toEqual(["12:34:56.789", "identify", "a@b.c", "u-2", "m-3"]);
});

test("raw webhook deliveries print differently", () => {
  const raw = { messageId: "d-1", raw: { receivedAt: track.receivedAt, headers: {}, rows: ['{"hello": "world"}', "{}"] } };
  expect(formatLine(raw, { utc: true }).split(/\s{2,}/)).toEqual(["12:34:56.789", "raw", '2 rows {"hello": "world"}', "-", "d-1"]);
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
