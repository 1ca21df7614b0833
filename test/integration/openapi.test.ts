import { expect, test } from "bun:test";
import { Value } from "@sinclair/typebox/value";
import type { TSchema } from "@sinclair/typebox";
import { useStack } from "../harness/stack.ts";
import {
  openApiDocument,
  IngestAnswer,
  PipelinesAnswer,
  ConnectionsAnswer,
  EventDetail,
  VersionAnswer,
  ReadyAnswer,
  WebhookAnswer,
  ErrorBody,
} from "../../src/ops/openapi.ts";

/** GET /openapi.json describes every route, its examples validate, and live answers match it. */

const ADMIN = "openapi-admin-token";
const stack = useStack(
  {
    "s.yaml": `connection: s\nsource: webhook\nwriteKeys: ["key-openapi-0001"]\npipelines:\n  - name: all\n    import: events\n`,
    "r.yaml": `connection: r\nsource: raw\ninsecure: true\n`,
  },
  { adminToken: ADMIN },
);

test("every route the node answers is described", async () => {
  const doc = (await (await fetch(`${stack.node.url}/openapi.json`)).json()) as {
    openapi: string;
    paths: Record<string, Record<string, unknown>>;
  };
  expect(doc.openapi).toBe("3.1.0");
  const missing = stack.node.routes
    .map((r) => ({ method: r.method.toLowerCase(), path: r.path.replace(/:(\w+)/g, "{$1}") }))
    .filter((r) => !doc.paths[r.path]?.[r.method]);
  expect(missing).toEqual([]);
  expect(stack.node.routes.length).toBeGreaterThan(20);
});

test("the documented examples validate against the schemas that validate requests", () => {
  const doc = openApiDocument("test") as { paths: Record<string, Record<string, any>> };
  let checked = 0;
  const visit = (schema: TSchema | undefined) => {
    if (!schema || !Array.isArray((schema as any).examples)) return;
    for (const ex of (schema as any).examples) {
      expect([...Value.Errors(schema, ex)].map((e) => e.message)).toEqual([]);
      checked++;
    }
  };
  for (const methods of Object.values(doc.paths)) {
    for (const op of Object.values(methods)) {
      visit(op.requestBody?.content?.["application/json"]?.schema);
      for (const r of Object.values(op.responses ?? {}) as any[]) visit(r.content?.["application/json"]?.schema);
    }
  }
  expect(checked).toBeGreaterThanOrEqual(10);
  // An example that breaks a rule is caught: the schemas are the real ones.
  const track = doc.paths["/v1/track"]!.post.requestBody.content["application/json"].schema;
  expect(Value.Check(track, { type: "track", userId: "u" })).toBe(false);
});

test("live answers match the documented response schemas", async () => {
  const expectShape = (schema: TSchema, value: unknown) =>
    expect([...Value.Errors(schema, value)].map((e) => `${e.path}: ${e.message}`)).toEqual([]);
  const post = (
    path: string,
    body: unknown,
    headers: Record<string, string> = { Authorization: "Bearer key-openapi-0001" },
  ) =>
    fetch(`${stack.node.url}${path}`, {
      method: "POST",
      headers,
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
  const admin = (path: string) => fetch(`${stack.node.url}${path}`, { headers: { Authorization: `Bearer ${ADMIN}` } });
  expectShape(
    IngestAnswer,
    await (
      await post("/v1/events", [
        { type: "track", event: "E", userId: "u" },
        { type: "track", userId: "u" },
      ])
    ).json(),
  );
  expectShape(ErrorBody, await (await post("/v1/events", "{")).json());
  expectShape(WebhookAnswer, await (await post("/v1/webhooks/r", { any: "thing" }, {})).json());
  expectShape(VersionAnswer, await (await fetch(`${stack.node.url}/version`)).json());
  expectShape(ReadyAnswer, await (await fetch(`${stack.node.url}/readyz`)).json());
  expectShape(ConnectionsAnswer, await (await admin("/v1/connections")).json());
  expectShape(PipelinesAnswer, await (await admin("/v1/pipelines")).json());
  expectShape(EventDetail, await (await admin("/v1/connections/s/events/nope")).json());
});

test("the document is valid OpenAPI 3.1 by a well-kept validator", async () => {
  const { Validator } = await import("@seriousme/openapi-schema-validator");
  const validator = new Validator();
  const doc = await (await fetch(`${stack.node.url}/openapi.json`)).json();
  const result = await validator.validate(doc);
  expect(result.errors ?? []).toEqual([]);
  expect(result.valid).toBe(true);
  expect(validator.version).toBe("3.1");
  // The validator does reject a broken document (no info, a response without a description).
  const broken = await new Validator().validate({
    openapi: "3.1.0",
    paths: { "/x": { get: { responses: { "200": {} } } } },
  });
  expect(broken.valid).toBe(false);
});
