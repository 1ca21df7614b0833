import { describe, expect, test } from "bun:test";
import {
  defaultOptions,
  Environment,
  inserterDefaults,
  parseOptions,
  parseSandboxEnvironment,
  sandboxDefaults,
  transformLimitDefaults,
  refusalLogDefaults,
  batchDefaults,
  ingestDefaults,
} from "../../src/config/env.ts";
import { refusal } from "../harness/env.ts";

describe("the environment (src/config/env.ts)", () => {
  test("2.5 replicas is refused, naming the variable, what it takes and what it got", () => {
    expect(refusal({ TRIBUTARY_STREAM_REPLICAS: "2.5" })).toBe(
      'environment: TRIBUTARY_STREAM_REPLICAS: expected an integer 1–5, got "2.5"',
    );
    expect(refusal({ TRIBUTARY_STREAM_REPLICAS: "0" })).toContain("TRIBUTARY_STREAM_REPLICAS");
    expect(refusal({ TRIBUTARY_STREAM_REPLICAS: "6" })).toContain("TRIBUTARY_STREAM_REPLICAS");
    expect(parseOptions({ TRIBUTARY_STREAM_REPLICAS: "3" }).streamReplicas).toBe(3);
  });

  test("every bad variable is named at once", () => {
    const m = refusal({ PORT: "http", TRIBUTARY_MAX_EVENTS_PER_REQUEST: "-1", TRUST_PROXY: "maybe" });
    expect(m).toContain('PORT: expected an integer 0–65535, got "http"');
    expect(m).toContain('TRIBUTARY_MAX_EVENTS_PER_REQUEST: expected an integer ≥ 1, got "-1"');
    expect(m).toContain('TRUST_PROXY: expected 1, true, yes or on (0, false, no or off), got "maybe"');
  });

  test("sizes and counts are whole numbers; time limits and hours may be fractions", () => {
    expect(refusal({ TRIBUTARY_MAX_REQUEST_BYTES: "1.5" })).toContain("TRIBUTARY_MAX_REQUEST_BYTES");
    expect(refusal({ TRIBUTARY_BATCH_MAX_ROWS: "0" })).toContain("TRIBUTARY_BATCH_MAX_ROWS");
    expect(refusal({ TRIBUTARY_EXPRESSION_TIMEOUT_MS: "0" })).toContain("expected a number > 0");
    expect(refusal({ LOG_FORMAT: "xml" })).toContain('LOG_FORMAT: expected json or pretty, got "xml"');
    expect(refusal({ LOG_LEVEL: "verbose" })).toContain("LOG_LEVEL");
    expect(refusal({ TRIBUTARY_SANDBOX_UID: "0" })).toContain("TRIBUTARY_SANDBOX_UID");
    const o = parseOptions({
      TRIBUTARY_DEDUP_WINDOW_HOURS: "0.5",
      TRIBUTARY_EXPRESSION_TIMEOUT_MS: "2.5",
      TRIBUTARY_STREAM_MAX_BYTES: "1048576",
      LOG_FORMAT: "JSON",
    });
    expect([o.dedupWindowHours, o.expressionTimeoutMs, o.streamMaxBytes, o.logFormat]).toEqual([
      0.5,
      2.5,
      1048576,
      "json",
    ]);
  });

  test("unset and empty take the default; an empty text with a default stays empty", () => {
    const d = defaultOptions();
    expect(parseOptions({})).toEqual(d);
    expect(parseOptions({ PORT: "", TRUST_PROXY: "", NATS_URL: "", LOG_FORMAT: "" })).toEqual(d);
    expect(parseOptions({ CLICKHOUSE_USER: "" }).clickhouseUser).toBe("");
    expect(parseOptions({ TRUST_PROXY: "Yes", TRIBUTARY_DEV_ADMIN: "off" })).toMatchObject({
      trustProxy: true,
      devAdmin: false,
    });
    expect(d).toMatchObject({ port: 2022, streamReplicas: 1, natsPort: 4222, clickhouseHttpPort: 8123 });
  });

  test("every variable has a description and a type the reference can state", () => {
    for (const [name, s] of Object.entries(Environment.properties as Record<string, { description?: string }>))
      expect([name, !!s.description]).toEqual([name, true]);
  });

  test("the sandbox's variables validate as the node's, with the defaults the components use", async () => {
    expect(() => parseSandboxEnvironment({ TRIBUTARY_TRANSFORM_MEMORY_MB: "-1" })).toThrow(
      /TRIBUTARY_TRANSFORM_MEMORY_MB: expected a number > 0/,
    );
    expect(parseSandboxEnvironment({ TRIBUTARY_SANDBOX_CPU_SECONDS: "30" }).TRIBUTARY_SANDBOX_CPU_SECONDS).toBe(30);
    // Each component's defaults are env.ts's (the sandbox's and transforms' read them from there).
    const { defaultSandboxOptions } = await import("../../src/pipeline/transform/sandbox-isolation.ts");
    const { resolveLimits } = await import("../../src/pipeline/transform/host.ts");
    const { refusalLogDefaults: refusals } = await import("../../src/ingest/refusal-log.ts");
    const { inserterDefaults: inserter } = await import("../../src/sink/clickhouse/inserter.ts");
    expect(defaultSandboxOptions()).toMatchObject(sandboxDefaults);
    expect(resolveLimits()).toEqual(transformLimitDefaults);
    expect(refusals).toEqual(refusalLogDefaults);
    expect(inserter).toEqual(inserterDefaults);
    expect(batchDefaults.maxRows).toBe(defaultOptions().batchMaxRows);
    expect(ingestDefaults.maxInFlightBytes).toBe(defaultOptions().maxInFlightBytes);
  });
});
