import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { TSchema } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { ENVIRONMENT, EXAMPLES, REFERENCE_PATH, renderConfigReference } from "../../scripts/config-reference.ts";
import { Connection, CustomerModelFile, Pipeline } from "../../src/config/schema.ts";
import { loadConfig } from "../../src/config/loader.ts";
import { DEFAULT_USERS_FILTER } from "../../src/pipeline/users/users-stage.ts";
import { openApiDocument } from "../../src/ops/openapi.ts";
import { pipelinesDir } from "../harness/services.ts";

/**
 * docs/configuration.md is the configuration reference a clone has (issue 17 #3). It is generated
 * from the schemas, so these tests keep it from drifting: the committed file is what the generator
 * makes, every key is described, every example is valid, and every variable the node reads is listed.
 */
describe("configuration reference", () => {
  test("docs/configuration.md is what `npm run docs:config` generates", () => {
    let committed = "";
    try {
      committed = readFileSync(REFERENCE_PATH, "utf8");
    } catch {}
    if (committed !== renderConfigReference())
      throw new Error("docs/configuration.md is out of date: run `npm run docs:config` and commit the result");
  });

  test("every key of every file kind has a description, and every example is valid for its key", () => {
    const undescribed: string[] = [];
    let examples = 0;
    const visit = (s: TSchema & Record<string, any>, at: string) => {
      for (const ex of s.examples ?? []) {
        expect([at, [...Value.Errors(s, ex)].map((e) => e.message)]).toEqual([at, []]);
        examples++;
      }
      for (const [k, child] of Object.entries((s.properties ?? {}) as Record<string, TSchema & Record<string, any>>)) {
        // A key is described on itself, or (a one-key form of a described union) by its own schema.
        if (!child.description) undescribed.push(`${at}.${k}`);
        visit(child, `${at}.${k}`);
      }
      for (const b of s.anyOf ?? []) visit(b, at);
      if (s.items) visit(s.items, `${at}[]`);
      for (const v of Object.values(s.patternProperties ?? {})) visit(v as TSchema & Record<string, any>, `${at}.*`);
    };
    visit(Connection as any, "connection file");
    visit(CustomerModelFile as any, "customer model file");
    expect(undescribed).toEqual([]);
    expect(examples).toBeGreaterThanOrEqual(15);
    // The reference states the default users filter: it must be the one the node applies.
    expect(Pipeline.properties.filter.description).toContain(DEFAULT_USERS_FILTER);
  });

  test("the reference's example files load as the node loads them", () => {
    const dir = pipelinesDir(EXAMPLES);
    try {
      const c = loadConfig(dir, { WEBSITE_WRITE_KEY: "website-key-0001", GITHUB_WEBHOOK_SECRET: "github-secret" });
      expect([...c.connections.keys()].sort()).toEqual(["github", "website"]);
      expect(Object.keys(c.customerModel)).toContain("email");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("every environment variable the node reads is documented", () => {
    const documented = new Set(ENVIRONMENT.map(([name]) => name));
    const read = new Set<string>();
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (statSync(path).isDirectory()) walk(path);
        else if (name.endsWith(".ts"))
          for (const m of readFileSync(path, "utf8").matchAll(/\benv\.([A-Z][A-Z0-9_]+)\b/g)) read.add(m[1]!);
      }
    };
    walk(join(import.meta.dir, "../../src"));
    read.delete("TRIBUTARY_SANDBOX_TEST_UNGUARDED"); // a switch for the sandbox's own tests, never for users
    expect(read.size).toBeGreaterThan(30);
    expect([...read].filter((n) => !documented.has(n)).sort()).toEqual([]);
  });

  test("GET /openapi.json points to the reference in the repository, not to a file outside it", () => {
    const info = (openApiDocument("test") as { info: { description: string } }).info.description;
    expect(info).toContain("docs/configuration.md");
    expect(info).not.toContain("PRODUCT.md");
  });
});
