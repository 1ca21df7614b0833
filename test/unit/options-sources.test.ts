import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { defaultOptions, Environment, parseOptions, transformLimitDefaults } from "../../src/config/env.ts";
import { resolveLimits } from "../../src/pipeline/transform/host.ts";
import { warehouseOptionsOf } from "../../src/sink/clickhouse/server.ts";
import { defaultLogLevel, LOG_LEVELS } from "../../src/util/log.ts";
import { refusal } from "../harness/env.ts";

/** Issue 18: src/config/env.ts is the one source of the defaults, and its refusals name the variable. */
const ROOT = join(import.meta.dir, "../..");

describe("LOG_LEVEL", () => {
  test("takes the levels log.ts knows, in any case, and refuses others naming the variable", () => {
    const schema = Environment.properties.LOG_LEVEL as unknown as { anyOf: { const: string }[]; default: string };
    expect(schema.anyOf.map((b) => b.const)).toEqual([...LOG_LEVELS]);
    expect(refusal({ LOG_LEVEL: "loud" })).toBe(
      'environment: LOG_LEVEL: expected debug, info, warn or error, got "loud"',
    );
    expect(parseOptions({ LOG_LEVEL: "WARN" }).logLevel).toBe("warn");
    expect(defaultOptions().logLevel).toBe("info");
  });

  test("a process that never parsed its environment reads the variable as the node would, leniently", () => {
    expect(defaultLogLevel({ LOG_LEVEL: "Debug" })).toBe("debug");
    expect(defaultLogLevel({ LOG_LEVEL: "error" })).toBe("error");
    // Not its job to refuse (the node does, above): an unknown level is the default.
    expect(defaultLogLevel({ LOG_LEVEL: "loud" })).toBe(defaultOptions().logLevel);
    expect(defaultLogLevel({ LOG_LEVEL: "constructor" })).toBe(defaultOptions().logLevel);
    expect(defaultLogLevel({})).toBe(defaultOptions().logLevel);
  });

  test("npm start refuses LOG_LEVEL=loud before starting anything, naming the variable", async () => {
    const p = Bun.spawn([process.execPath, join(ROOT, "src/main.ts")], {
      env: { ...process.env, LOG_LEVEL: "loud", LOG_FORMAT: "json", PORT: "0" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const err = await new Response(p.stderr).text();
    expect(await p.exited).toBe(1);
    const line = JSON.parse(err.trim().split("\n").at(-1)!) as { level: string; msg: string };
    expect(line).toEqual({
      time: expect.any(String),
      level: "error",
      msg: 'not started: environment: LOG_LEVEL: expected debug, info, warn or error, got "loud"',
    } as never);
  }, 30_000);
});

describe("transform limits", () => {
  test("their defaults are the environment's", () => {
    const d = Environment.properties;
    expect(transformLimitDefaults).toEqual({
      timeoutMs: (d.TRIBUTARY_TRANSFORM_TIMEOUT_MS as unknown as { default: number }).default,
      memoryBytes: (d.TRIBUTARY_TRANSFORM_MEMORY_MB as unknown as { default: number }).default * 1024 * 1024,
    });
    expect(resolveLimits()).toEqual(transformLimitDefaults);
    expect(resolveLimits({ timeoutMs: 7 })).toEqual({ ...transformLimitDefaults, timeoutMs: 7 });
    expect(resolveLimits({ timeoutMs: 7, memoryBytes: 9 })).toEqual({ timeoutMs: 7, memoryBytes: 9 });
    expect(() => resolveLimits({ timeoutMs: 0 })).toThrow(RangeError);
  });

  test("a sandbox, given both limits, never loads the node's configuration", async () => {
    const code = `
      const { resolveLimits } = await import(${JSON.stringify(join(ROOT, "src/pipeline/transform/host.ts"))});
      await import(${JSON.stringify(join(ROOT, "src/pipeline/transform/javascript.ts"))});
      resolveLimits({ timeoutMs: 100, memoryBytes: 1 << 26 });
      console.log(JSON.stringify(Object.keys(require.cache).filter((k) => k.includes("/src/config/"))));`;
    const p = Bun.spawn([process.execPath, "-e", code], { stdout: "pipe", stderr: "inherit", cwd: ROOT });
    const out = await new Response(p.stdout).text();
    expect(await p.exited).toBe(0);
    expect(JSON.parse(out)).toEqual([]);
  }, 30_000);
});

describe("warehouseOptionsOf", () => {
  test("is the node's ClickHouse settings, cluster included", () => {
    expect(
      warehouseOptionsOf(
        parseOptions({
          CLICKHOUSE_URL: "http://a:8123,http://b:8123",
          CLICKHOUSE_USER: "u",
          CLICKHOUSE_PASSWORD: "p",
          TRIBUTARY_DATABASE: "d",
          TRIBUTARY_CLICKHOUSE_CLUSTER: "c",
        }),
      ),
    ).toEqual({ url: "http://a:8123,http://b:8123", username: "u", password: "p", database: "d", cluster: "c" });
  });

  test("without CLICKHOUSE_URL: the local clickhouse-server npm start runs, on its port", () => {
    expect(warehouseOptionsOf(defaultOptions())).toMatchObject({
      url: `http://127.0.0.1:${defaultOptions().clickhouseHttpPort}`,
      username: "default",
      password: "",
      database: "tributary",
      cluster: undefined,
    });
    expect(warehouseOptionsOf(parseOptions({ CLICKHOUSE_HTTP_PORT: "9123" })).url).toBe("http://127.0.0.1:9123");
  });
});
