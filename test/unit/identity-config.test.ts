import { expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { ConfigError, loadConfig } from "../../src/config/loader.ts";
import { rulesOf } from "../../src/pipeline/users/identity-rules.ts";
import { pipelinesDir } from "../harness/services.ts";

/** `identifiers` in the Customer Model file (issue 21): loaded in order, refused when no property can match. */
function load(model: string) {
  const dir = pipelinesDir({ "customer-model.yaml": model });
  try {
    return loadConfig(dir, {});
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function problems(model: string): string[] {
  try {
    load(model);
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return [];
}

test("identifiers load in priority order; userIds stay authoritative unless said otherwise", () => {
  const c = load("customerModel: {email: string, phone: string, plan: string}\nidentifiers: [phone, email]\n");
  expect(rulesOf(c)).toEqual({ identifiers: ["phone", "email"], mergeUserIds: false });
  const m = load("customerModel: {email: string}\nidentifiers: [email]\nidentifiersMergeUserIds: true\n");
  expect(rulesOf(m)).toEqual({ identifiers: ["email"], mergeUserIds: true });
  expect(rulesOf(load("customerModel: {email: string}\n"))).toEqual({ identifiers: [], mergeUserIds: false });
});

test("an identifier that is not a Customer Model property, or holds no single value, is refused with file and line", () => {
  const p = problems(
    "customerModel:\n  email: string\n  tags: array(string)\n  extra: json\nidentifiers: [emial, tags, extra]\n",
  );
  expect(p.length).toBe(3);
  expect(p[0]).toContain('identifiers/0: "emial" is not a Customer Model property; did you mean email?');
  expect(p[0]).toMatch(/customer-model\.yaml:5:/);
  expect(p[1]).toContain('"tags" is array(string)');
  expect(p[2]).toContain('"extra" is json');
  expect(problems("customerModel: {email: string}\nidentifiers: [email, email]\n").length).toBeGreaterThan(0);
});
