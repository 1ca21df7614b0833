import { expect, test } from "bun:test";
import {
  ModelCheck,
  datetimeMs,
  datetimeProblem,
  datetimeRange,
  toCell,
} from "../../src/pipeline/users/customer-model.ts";
import { PROFILE_LIMITS, idProblem, profileBytes, type Profile } from "../../src/pipeline/users/profiles.ts";
import { featuresOf } from "../../src/sink/clickhouse/server.ts";

/** The checks behind issue 16 #1 (integration: users-poison, users-chdb, users-ack.property). */
const current = featuresOf("24.8.1");
const old = featuresOf("18.16.1");

test("datetimes: the calendar is checked field by field, text without an offset is UTC", () => {
  expect(datetimeMs("2024-02-29")).toBe(Date.UTC(2024, 1, 29));
  expect(datetimeMs("2024-02-29T12:30:15.250+02:00")).toBe(Date.UTC(2024, 1, 29, 10, 30, 15, 250));
  expect(datetimeMs("2024-02-29 12:30")).toBe(Date.UTC(2024, 1, 29, 12, 30));
  expect(new Date(datetimeMs("0099-01-01") as number).getUTCFullYear()).toBe(99);
  for (const bad of [
    "2024-13-45",
    "2023-02-29",
    "2024-04-31",
    "2024-00-10",
    "2024-01-00",
    "2024-01-01T24:00",
    "2024-01-01T23:60",
    "2024-01-01T23:59:60",
    "2024-01-01T00:00+24:00",
    "2024-1-1",
    "tomorrow",
  ]) {
    expect(typeof datetimeMs(bad)).toBe("string");
  }
  expect(typeof datetimeMs(1.5)).toBe("string");
  // biome-ignore lint/correctness/noPrecisionLoss: a number past 2^53 is the point of the case
  expect(typeof datetimeMs(9007199254740993)).toBe("string");
});

test("datetimes: the range is the column's, by server", () => {
  expect(datetimeRange(current)).toEqual({ min: Date.UTC(1900, 0, 1), max: Date.UTC(2299, 11, 31, 23, 59, 59, 999) });
  expect(datetimeRange(featuresOf("21.8"))).toEqual({
    min: Date.UTC(1925, 0, 1),
    max: Date.UTC(2283, 10, 11, 23, 59, 59, 999),
  });
  expect(datetimeRange(old)).toEqual({ min: 0, max: 4294967295999 });
  expect(datetimeProblem("1900-01-01T00:00:00Z", current)).toBeUndefined();
  expect(datetimeProblem("2299-12-31T23:59:59.999Z", current)).toBeUndefined();
  expect(datetimeProblem("1899-12-31T23:59:59.999Z", current)).toContain("outside");
  expect(datetimeProblem("2300-01-01", current)).toContain("outside");
  expect(datetimeProblem(9007199254740991, current)).toContain("outside");
  expect(datetimeProblem(-1, old)).toContain("outside");
  expect(datetimeProblem(-1, current)).toBeUndefined();
  expect(datetimeProblem("2106-02-07T06:28:15.999Z", old)).toBeUndefined();
  expect(datetimeProblem("2106-02-07T06:28:16Z", old)).toContain("outside");
});

test("the model check refuses what the column cannot hold; toCell never throws and never gives what the column refuses", () => {
  const check = new ModelCheck({ at: "datetime", ats: "array(datetime)", n: "int" }, current);
  expect(() => check.assert({ at: "2024-02-29T00:00:00Z", ats: ["1900-01-01"], n: 1 })).not.toThrow();
  expect(() => check.assert({ at: "2024-13-45" })).toThrow(
    `property "at" must be datetime, got "2024-13-45": month 13 does not exist`,
  );
  expect(() => check.assert({ ats: ["2024-01-01", 9007199254740991] })).toThrow(
    `property "ats" must be array(datetime), got 9007199254740991: outside`,
  );
  for (const v of ["2024-13-45", 9007199254740991, "x", 1.5, {}]) expect(toCell("datetime", v, current)).toBeNull();
  expect(toCell("array(datetime)", ["2024-01-01", "2024-02-30"], current)).toEqual(["2024-01-01 00:00:00.000"]);
  expect(toCell("int", "forty", current)).toBeNull();
  expect(toCell("string", 42, current)).toBeNull();
  expect(toCell("boolean", "yes", old)).toBeNull();
});

test("bounds: ids by UTF-8 bytes; profileBytes tracks the stored JSON", () => {
  expect(idProblem("userId", "é".repeat(512))).toBeUndefined();
  expect(idProblem("userId", "é".repeat(513))).toBe("userId is 1,026 bytes, more than the 1,024 an id may have");
  const p: Profile = {
    id: "p",
    userId: "u",
    anonymousIds: ["a1", 'a"2'],
    firstSeen: 1,
    lastSeen: 2,
    updatedAt: 3,
    props: { plan: { v: "é".repeat(1000), t: 5, m: "m1" }, tags: { v: ["x"], t: 5, m: "m2" } },
  };
  const exact = Buffer.byteLength(JSON.stringify(p));
  expect(Math.abs(profileBytes(p) - exact)).toBeLessThanOrEqual(4);
  expect(PROFILE_LIMITS).toEqual({ idBytes: 1024, anonymousIds: 100, profileBytes: 262144 });
});
