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

/** Polls until `check` holds, for up to 20 s (a reload takes the debounce plus a file read). */
async function until(check: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 20_000; !check() && Date.now() < deadline; ) await Bun.sleep(20);
}

describe("pipelines/ configuration", () => {
  test("the shipped example loads with its development key", () => {
    const c = loadConfig("pipelines", {});
    expect(c.connections.get("example")?.writeKeys).toEqual(["dev-example-write-key"]);
    expect(loadConfig("pipelines", { EXAMPLE_WRITE_KEY: "prod-key-123" }).connections.get("example")?.writeKeys).toEqual(["prod-key-123"]);
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
    const p = problems({ "a.yaml": "connection: a\nsource: webhook\nwriteKeys: [\"abcdefgh12\"]\npipelines:\n  - name: x\n    import: everything\n" });
    expect(p.some((m) => /a\.yaml:6: pipelines\/0\/import/.test(m))).toBe(true);
    const q = problems({ "b.yaml": "connection: Bad Name\nsource: webhook\nwriteKeys: [\"abcdefgh12\"]\n" });
    expect(q[0]).toMatch(/b\.yaml:1: connection:/);
    const r = problems({ "c.yaml": "connection: c\nsource: kafka\nwriteKeys: [\"abcdefgh12\"]\n" });
    expect(r[0]).toMatch(/c\.yaml:2: source:/);
  });

  test("YAML syntax errors and cross-file conflicts are reported", () => {
    expect(problems({ "x.yaml": "connection: [unclosed\n" })[0]).toMatch(/x\.yaml:\d+: YAML:/);
    const dup = problems({
      "a.yaml": 'connection: a\nsource: webhook\nwriteKeys: ["shared-key-1"]\n',
      "b.yaml": 'connection: a\nsource: segment\nwriteKeys: ["shared-key-1"]\n',
    });
    expect(dup.some((m) => /already defined in/.test(m))).toBe(true);
    expect(problems({ "n.yaml": "connection: n\nsource: webhook\n" })[0]).toMatch(/writeKeys: a webhook connection needs at least one write key/);
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
});
