import { describe, expect, test } from "bun:test";
import { writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { loadConfig, ConfigError } from "../../src/config/loader.ts";
import { ConfigStore } from "../../src/config/store.ts";
import { pipelinesDir } from "../harness/services.ts";

const problems = (files: Record<string, string>, env: Record<string, string> = {}) => {
  const dir = pipelinesDir(files);
  try {
    loadConfig(dir, env);
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return [];
};

/** The file name as problems show it (relative to the working directory). */
const shown = (problems: string[], name: string) =>
  problems.map((p) => p.slice(0, p.indexOf(":"))).find((f) => f.endsWith(`/${name}`)) ?? name;

/** Polls until `check` holds, for up to 20 s (a reload takes the debounce plus a file read). */
async function until(check: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 20_000; !check() && Date.now() < deadline; ) await Bun.sleep(20);
}

describe("pipelines/ configuration", () => {
  test("the shipped example loads with its development key", () => {
    const c = loadConfig("pipelines", {});
    expect(c.connections.get("example")?.writeKeys).toEqual(["dev-example-write-key"]);
    expect(
      loadConfig("pipelines", { EXAMPLE_WRITE_KEY: "prod-key-123" }).connections.get("example")?.writeKeys,
    ).toEqual(["prod-key-123"]);
  });

  test("${VAR} is substituted; a missing one names file and line", () => {
    const files = { "web.yaml": "connection: web\nsource: webhook\nwriteKeys:\n  - ${WEB_KEY}\n" };
    const dir = pipelinesDir(files);
    expect(loadConfig(dir, { WEB_KEY: "abcdefgh12" }).connections.get("web")?.writeKeys).toEqual(["abcdefgh12"]);
    rmSync(dir, { recursive: true, force: true });
    const p = problems(files);
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/web\.yaml:4: environment variable \$\{WEB_KEY\} is not set/);
  });

  test("a schema error names file, line and field", () => {
    const p = problems({
      "a.yaml":
        'connection: a\nsource: webhook\nwriteKeys: ["abcdefgh12"]\npipelines:\n  - name: x\n    import: everything\n',
    });
    expect(p.some((m) => /a\.yaml:6: pipelines\/0\/import/.test(m))).toBe(true);
    const q = problems({ "b.yaml": 'connection: Bad Name\nsource: webhook\nwriteKeys: ["abcdefgh12"]\n' });
    expect(q[0]).toMatch(/b\.yaml:1: connection:/);
    const r = problems({ "c.yaml": 'connection: c\nsource: kafka\nwriteKeys: ["abcdefgh12"]\n' });
    expect(r[0]).toMatch(/c\.yaml:2: source:/);
  });

  test("YAML syntax errors and cross-file conflicts are reported", () => {
    expect(problems({ "x.yaml": "connection: [unclosed\n" })[0]).toMatch(/x\.yaml:\d+: YAML:/);
    const dup = problems({
      "a.yaml": 'connection: a\nsource: webhook\nwriteKeys: ["shared-key-1"]\n',
      "b.yaml": 'connection: a\nsource: segment\nwriteKeys: ["shared-key-1"]\n',
    });
    expect(dup.some((m) => /already defined in/.test(m))).toBe(true);
    expect(problems({ "n.yaml": "connection: n\nsource: webhook\n" })[0]).toMatch(
      /writeKeys: a webhook connection needs at least one write key/,
    );
    expect(problems({ "r.yaml": "connection: r\nsource: raw\n" })[0]).toMatch(/insecure: true/);
  });

  test("a broken change keeps the last good configuration; a fixed one is picked up", async () => {
    const dir = pipelinesDir({ "w.yaml": 'connection: w\nsource: webhook\nwriteKeys: ["first-key-1"]\n' });
    const store = new ConfigStore({ dir, env: {}, debounceMs: 20 });
    store.watch();
    try {
      writeFileSync(join(dir, "w.yaml"), "connection: w\nsource: webhook\nwriteKeys: [oops\n");
      // Wait for the reload to have happened (a condition, not a fixed time), then check what it kept.
      await until(() => store.lastError !== undefined);
      expect(store.current.connections.get("w")?.writeKeys).toEqual(["first-key-1"]);
      expect(store.lastError).toMatch(/w\.yaml/);
      writeFileSync(join(dir, "w.yaml"), 'connection: w\nsource: webhook\nwriteKeys: ["second-key-2"]\n');
      await until(() => store.lastError === undefined);
      expect(store.current.connections.get("w")?.writeKeys).toEqual(["second-key-2"]);
      expect(store.lastError).toBeUndefined();
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  test("a value that is not allowed lists the allowed ones, with the closest (issue 17 #4)", () => {
    const p = problems({
      "a.yaml":
        'connection: a\nsource: webhook\nwriteKeys: ["abcdefgh12"]\nip: mask\npipelines:\n  - name: x\n    import: event\n',
    });
    expect(p).toContain(`${shown(p, "a.yaml")}:7: pipelines/0/import: expected events | users; did you mean events?`);
    expect(p).toContain(`${shown(p, "a.yaml")}:4: ip: expected keep | mask24 | drop; did you mean mask24?`);
    const m = problems({ "m.yaml": "customerModel:\n  age: integer\n  Plan: string\n" });
    expect(
      m.some((x) => /m\.yaml:2: customerModel\/age: expected string \| int \| float \| .*array\(datetime\)$/.test(x)),
    ).toBe(true);
    // Property names become column names: one the pattern refuses is an error, not a column.
    expect(m.some((x) => /m\.yaml:3: customerModel\/Plan: "Plan" is not a valid name/.test(x))).toBe(true);
  });

  test("an unknown key names the closest known one, also inside a union of forms (issue 17 #4)", () => {
    const p = problems({
      "a.yaml":
        'connection: a\nsource: webhook\nwriteKeys: ["abcdefgh12"]\nallowedOrigin: ["https://x.example"]\npipelines:\n  - name: u\n    import: users\n    transform:\n      mappings: {email: traits.email}\n',
      "r.yaml": "connection: r\nsource: raw\ninsecure: true\ndedup: {heder: X-Id}\n",
      "h.yaml":
        "connection: h\nsource: raw\ncheck: {hmac: {header: X-Sig, algorithm: sha265, encoding: hex, secret: s}}\n",
    });
    expect(p).toContain(
      `${shown(p, "a.yaml")}:4: allowedOrigin: unknown key "allowedOrigin"; did you mean allowedOrigins?`,
    );
    expect(p).toContain(
      `${shown(p, "a.yaml")}:9: pipelines/0/transform: expected {mapping} | {jsonata} | {javascript} | {python}; unknown key "mappings"; did you mean mapping?`,
    );
    expect(p).toContain(
      `${shown(p, "r.yaml")}:4: dedup: expected {header} | {jsonata}; unknown key "heder"; did you mean header?`,
    );
    // The form the file meant ({hmac}) is checked, so the error names the field inside it.
    expect(p).toContain(
      `${shown(p, "h.yaml")}:3: check/hmac/algorithm: expected sha1 | sha256 | sha512; did you mean sha256?`,
    );
    // Two forms at once, and a value of the wrong kind, say what the key takes.
    const t = problems({
      "t.yaml":
        'connection: t\nsource: webhook\nwriteKeys: abcdefgh12\npipelines:\n  - name: u\n    import: users\n    transform: {mapping: {email: traits.email}, jsonata: "{}"}\n',
    });
    expect(t).toContain(`${shown(t, "t.yaml")}:3: writeKeys: expected a list of text`);
    expect(t).toContain(
      `${shown(t, "t.yaml")}:7: pipelines/0/transform: expected exactly one of {mapping} | {jsonata} | {javascript} | {python}, not mapping and jsonata together`,
    );
    // Nothing close: the known keys are listed.
    const q = problems({ "b.yaml": 'connection: b\nsource: webhook\nwriteKeys: ["abcdefgh12"]\nzzz: 1\n' });
    expect(q[0]).toMatch(
      /b\.yaml:4: zzz: unknown key "zzz"; expected one of connection, source, writeKeys, allowedOrigins, /,
    );
  });

  test("a mapping onto a property the Customer Model lacks is refused at load, so start-up and reload refuse it too (issue 17 #4)", async () => {
    const connection = (property: string) =>
      `connection: w\nsource: webhook\nwriteKeys: ["abcdefgh12"]\npipelines:\n  - name: profiles\n    import: users\n    transform:\n      mapping:\n        email: traits.email\n        ${property}: traits.plan\n`;
    const model = "customerModel:\n  email: string\n  plan: string\n";
    const p = problems({ "w.yaml": connection("plna"), "model.yaml": model });
    expect(p).toEqual([
      `${shown(p, "w.yaml")}:10: pipelines/0/transform/mapping/plna of "profiles": property "plna" is not in the Customer Model; did you mean plan?`,
    ]);
    expect(problems({ "w.yaml": connection("zzz"), "model.yaml": model })[0]).toMatch(
      /w\.yaml:10: .*property "zzz" is not in the Customer Model \(it has email, plan\)$/,
    );
    expect(problems({ "w.yaml": connection("plan") })[0]).toMatch(
      /w\.yaml:9: .*property "email" is not in the Customer Model, which has no properties/,
    );
    expect(problems({ "w.yaml": connection("plan"), "model.yaml": model })).toEqual([]);

    // A running node keeps its last good configuration when a change maps onto a missing property.
    const dir = pipelinesDir({ "w.yaml": connection("plan"), "model.yaml": model });
    const store = new ConfigStore({ dir, env: {}, debounceMs: 20 });
    store.watch();
    try {
      writeFileSync(join(dir, "w.yaml"), connection("plna"));
      await until(() => store.lastError !== undefined);
      expect(store.lastError).toMatch(/property "plna" is not in the Customer Model; did you mean plan\?/);
      expect(
        Object.keys((store.current.connections.get("w")!.pipelines![0]!.transform as { mapping: object }).mapping),
      ).toEqual(["email", "plan"]);
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
